//! Traces: observe's `tracing` spans as OpenTelemetry spans, exported over OTLP.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//! Off costs nothing beyond the log fields: no OpenTelemetry layer is installed, no exporter
//! thread starts, and the spans that exist only for traces (ingest flushes, PostgreSQL
//! statements, outgoing calls, actor work) are at `debug`, which the default log filter leaves
//! disabled, so they are never built. The request span exists either way because its request
//! id is on every log line.
//!
//! On, the standard variables configure it, read by the OpenTelemetry SDK and exporter
//! themselves: `OTEL_SERVICE_NAME` (default `observe`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` and
//! `0.01`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`. Spans go
//! over HTTP with protobuf bodies (`http/protobuf`, the OTLP default for HTTP) from a batch
//! processor on its own thread, so exporting never runs on an HTTP worker or an actor.
//!
//! Trace context crosses boundaries three ways: an incoming W3C `traceparent` is continued
//! ([`server_span`]); work done later for a request — the ingest flush that commits it — is
//! made its child through a [`Parent`] carried in the message; and outgoing calls carry
//! `traceparent` ([`inject`]). Every log line written under a span carries `trace_id` and
//! `span_id` ([`WithTraceIds`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::dispatcher::WeakDispatch;
use tracing::{Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, Filtered, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Whether spans are being exported; set once, when the subscriber is installed.
static ON: AtomicBool = AtomicBool::new(false);

/// True when traces are exported (the OpenTelemetry layer is installed).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// What the trace configuration got wrong; observe refuses to start rather than run without
/// the traces its operator asked for.
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    #[error(
        "{variable}={value:?}: observe exports traces over OTLP/HTTP with protobuf bodies; \
         set it to http/protobuf or leave it unset"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT={0:?}: observe exports traces over plain http:// only; \
         run an OpenTelemetry Collector beside it to forward them over TLS"
    )]
    Scheme(String),
    #[error("the OTLP trace exporter cannot be built: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The trace pipeline: a tracer provider with a batch processor feeding the OTLP exporter.
/// `main` keeps it and calls [`Exporter::shutdown`] last, so spans still buffered leave.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// The exporter the process environment asks for, or `None` when traces are off.
    pub fn from_env() -> Result<Option<Self>, TraceConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Exporter::from_env`], with the variables read through `var` (tests).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceConfigError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let Some(endpoint) = endpoint.filter(|_| !disabled) else {
            return Ok(None);
        };
        if !endpoint.trim().to_ascii_lowercase().starts_with("http://") {
            return Err(TraceConfigError::Scheme(endpoint));
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(variable) {
                if value != "http/protobuf" {
                    return Err(TraceConfigError::Protocol { variable, value });
                }
                break;
            }
        }
        // The endpoint, headers, timeout and compression come from the same variables, read
        // by the exporter itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(TraceConfigError::Exporter)?;
        let named = set("OTEL_SERVICE_NAME").is_some()
            || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if !named {
            resource = resource.with_service_name("observe");
        }
        // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK's default config.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Some(Self { provider }))
    }

    /// The layer turning observe's spans into OpenTelemetry spans. Only observe's own spans
    /// (at `debug` and above) and its warnings and errors (as span events) reach it: the
    /// libraries' spans, the exporter's HTTP client among them, never do.
    pub fn layer<S>(&self) -> Filtered<impl Layer<S>, impl tracing_subscriber::layer::Filter<S>, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        ON.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("observe"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            // Both cost a lock and more on every poll of every instrumented future (each poll
            // enters and leaves its span): busy/idle times are not what a trace needs, and
            // nothing here reads OpenTelemetry's thread-local current context — parents come
            // from the span tree, and [`current_ids`] asks the current span itself. Measured:
            // README, Benchmarks.
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(filter_fn(exported).with_max_level_hint(LevelFilter::DEBUG))
    }

    /// Exports what is buffered and stops the exporter thread. Blocking: call it outside the
    /// async runtime, at the end of `main`.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter shutdown");
        }
    }
}

/// Which spans and events become parts of traces.
fn exported(meta: &Metadata<'_>) -> bool {
    let level = if meta.is_span() {
        Level::DEBUG
    } else {
        Level::WARN
    };
    meta.target().starts_with("observe") && *meta.level() <= level
}

/// A span's place in a trace, carried to work done for it elsewhere: an ingest flush is the
/// child of the first sampled request it commits and links to the others. Empty when traces
/// are off or the span is not part of one.
#[derive(Debug, Clone, Default)]
pub struct Parent(Option<SpanContext>);

impl Parent {
    /// The current span's place, if it is sampled. Only the ids and flags are kept: a
    /// caller's `tracestate` (up to 32 entries) is not carried into buffered work.
    pub fn current() -> Self {
        if !enabled() {
            return Self(None);
        }
        let cx = Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        Self((sc.is_valid() && sc.is_sampled()).then(|| {
            SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags(),
                false,
                TraceState::default(),
            )
        }))
    }

    /// True when there is a sampled span to be the parent of, or to link to.
    pub fn is_sampled(&self) -> bool {
        self.0.is_some()
    }

    /// Makes `span` (not yet entered) a child of this one.
    pub fn adopt(&self, span: &Span) {
        if let Some(sc) = &self.0 {
            let _ = span.set_parent(Context::new().with_remote_span_context(sc.clone()));
        }
    }

    /// Links `span` to this one (work for several requests names each).
    pub fn link(&self, span: &Span) {
        if let Some(sc) = &self.0 {
            span.add_link(sc.clone());
        }
    }
}

/// Reads `traceparent` / `tracestate` from request headers.
struct HeaderExtractor<'a>(&'a awc::http::header::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one HTTP request, named `request` and carrying its id for the logs. With traces
/// on it is a server span continuing the caller's `traceparent`, if it sent a valid one.
pub fn server_span(
    request_id: &str,
    method: &'static str,
    headers: &awc::http::header::HeaderMap,
) -> Span {
    // At ERROR level so the span, and the request id with it, exists under any log filter
    // that lets a line through: the warn and error lines are the ones that most need it.
    if !enabled() {
        return tracing::error_span!("request", request_id = %request_id, method = %method);
    }
    let span = tracing::error_span!(
        "request",
        request_id = %request_id,
        method = %method,
        otel.kind = "server"
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// Names a request's span after its route template (`POST /ingest/events`) and records the
/// HTTP attributes; a 5xx marks it as an error.
pub fn finish_server_span(span: &Span, method: &str, route: &str, status: u16) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    let otel = cx.span();
    if !otel.is_recording() {
        return;
    }
    otel.update_name(format!("{method} {route}"));
    otel.set_attribute(KeyValue::new("http.request.method", method.to_string()));
    otel.set_attribute(KeyValue::new("http.route", route.to_string()));
    otel.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        otel.set_status(Status::error(format!("{status}")));
    }
}

/// The `traceparent` (and `tracestate`) headers that continue `span`'s trace in a call it makes;
/// empty when traces are off.
pub fn propagation_headers(span: &Span) -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers.into_iter().collect()
}

/// Adds `span`'s trace context to an outgoing request.
pub fn inject(mut req: awc::ClientRequest, span: &Span) -> awc::ClientRequest {
    for (name, value) in propagation_headers(span) {
        req = req.insert_header((name, value));
    }
    req
}

/// The trace and span ids of the span being run on this thread, if traces are on. (Not from
/// inside a subscriber: see [`DispatchSlot`].)
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// Where [`WithTraceIds`] finds the subscriber it writes for, filled once that subscriber is
/// installed ([`DispatchSlot::fill`]). Inside a subscriber's callback the usual ways to reach
/// it, such as `Span::current()`, answer "no subscriber", to prevent recursion. (Not a layer
/// told by `on_register_dispatch`: a layer interested in nothing would make every enabled
/// callsite re-check its filters on each hit.)
#[derive(Clone, Default)]
pub struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl DispatchSlot {
    /// Remembers the subscriber in effect here: call it right after installing one.
    pub fn fill(&self) {
        tracing::dispatcher::get_default(|d| {
            let _ = self.0.set(d.downgrade());
        });
    }
}

/// A JSON event format that puts `trace_id` and `span_id` first on each line written under a
/// span of a trace, and leaves the line as the inner format wrote it otherwise.
pub struct WithTraceIds<F> {
    inner: F,
    dispatch: DispatchSlot,
}

impl<F> WithTraceIds<F> {
    /// `dispatch` must be a layer of the same subscriber.
    pub fn new(inner: F, dispatch: DispatchSlot) -> Self {
        Self { inner, dispatch }
    }

    /// The ids of the span the event is written under: the subscriber's current span.
    ///
    /// This may start that span's OpenTelemetry side, under its lock. It is safe as long as
    /// nothing the SDK does while starting a span logs (true of opentelemetry_sdk 0.33: span
    /// start writes no log line); a log line there would wait for the lock it holds.
    fn ids(&self) -> Option<(TraceId, SpanId)> {
        if !enabled() {
            return None;
        }
        let dispatch = self.dispatch.0.get()?.upgrade()?;
        let current = dispatch.current_span();
        let cx = tracing_opentelemetry::get_otel_context(current.id()?, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = self.ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_when_disabled() {
        assert!(Exporter::from_vars(vars(&[])).unwrap().is_none());
        assert!(
            Exporter::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]))
                .unwrap()
                .is_none()
        );
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(
            Exporter::from_vars(vars(&[endpoint, ("OTEL_SDK_DISABLED", "true")]))
                .unwrap()
                .is_none()
        );
        assert!(
            Exporter::from_vars(vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_https_endpoint_is_refused_rather_than_failing_every_export() {
        let err = Exporter::from_vars(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otlp.example.com",
        )]))
        .err()
        .expect("https is refused");
        assert!(err.to_string().contains("Collector"), "{err}");
    }

    #[test]
    fn a_protocol_observe_does_not_speak_is_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let err = Exporter::from_vars(vars(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
            .err()
            .expect("grpc is refused");
        assert!(err.to_string().contains("http/protobuf"), "{err}");
        // The signal's own variable wins over the general one.
        let err = Exporter::from_vars(vars(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .err()
        .expect("http/json is refused");
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{err}"
        );
    }

    #[test]
    fn only_observes_own_spans_and_warnings_are_exported() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level: Level, kind: Kind| {
            Metadata::new(
                "x",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&SITE)),
                kind,
            )
        };
        assert!(exported(&meta(
            "observe_core::store",
            Level::DEBUG,
            Kind::SPAN
        )));
        assert!(exported(&meta(
            "observe::middleware",
            Level::ERROR,
            Kind::SPAN
        )));
        assert!(!exported(&meta(
            "observe_core::store",
            Level::TRACE,
            Kind::SPAN
        )));
        assert!(!exported(&meta(
            "hyper_util::client",
            Level::INFO,
            Kind::SPAN
        )));
        assert!(exported(&meta(
            "observe_actors::ingest",
            Level::WARN,
            Kind::EVENT
        )));
        assert!(!exported(&meta(
            "observe_actors::ingest",
            Level::INFO,
            Kind::EVENT
        )));
    }
}
