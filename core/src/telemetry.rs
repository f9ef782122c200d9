//! Logging setup and the panic hook.
//!
//! Logs are JSON lines on stdout (or human-readable with `OBSERVE_LOG_FORMAT=pretty`). Fields of
//! the enclosing spans are part of every line, which is how the request id reaches each line a
//! request logs; with traces on, each line under a span also starts with its `trace_id` and
//! `span_id` (see [`crate::trace`]). Nothing here logs headers or bodies; secrets are kept out of logs by never
//! handing them to a log macro (settings hold them as `SecretString`, whose `Debug` redacts).
//!
//! The panic hook sends panics through tracing instead of raw stderr, and remembers the last
//! panic message of each thread so the supervisor can name it as a restart reason.

use std::cell::RefCell;
use std::panic;
use std::sync::Once;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the global subscriber: the log layer, and with `traces` the OpenTelemetry layer
/// (see [`crate::trace`]). `writer` defaults to stdout; tests pass a capturing one. Returns
/// false when a subscriber was already installed (the first one stays).
pub fn init(
    log: &LogSettings,
    traces: Option<&crate::trace::Exporter>,
    writer: Option<BoxMakeWriter>,
) -> bool {
    // `try_init` also forwards the `log` crate's records (actix, tokio-postgres) to tracing, up
    // to the subscriber's most verbose level.
    let (subscriber, dispatch) = subscriber(log, traces, writer);
    let installed = subscriber.try_init().is_ok();
    if installed {
        dispatch.fill();
    }
    install_panic_hook(false);
    installed
}

/// The subscriber [`init`] installs. Each layer has its own filter: the log filter
/// (`RUST_LOG`, else `log.level`) decides which lines are written, the trace layer's which
/// spans are exported, and a span neither wants is never built.
pub fn subscriber(
    log: &LogSettings,
    traces: Option<&crate::trace::Exporter>,
    writer: Option<BoxMakeWriter>,
) -> (
    impl tracing::Subscriber + Send + Sync,
    crate::trace::DispatchSlot,
) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    layered(filter, log.format, traces, writer)
}

/// [`subscriber`] with its log filter given.
fn layered(
    filter: EnvFilter,
    format: LogFormat,
    traces: Option<&crate::trace::Exporter>,
    writer: Option<BoxMakeWriter>,
) -> (
    impl tracing::Subscriber + Send + Sync,
    crate::trace::DispatchSlot,
) {
    let writer = writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
    let dispatch = crate::trace::DispatchSlot::default();
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(crate::trace::WithTraceIds::new(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(true)
                    .flatten_event(true)
                    .with_target(true),
                dispatch.clone(),
            ))
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(logs)
        .with(traces.map(|t| t.layer()));
    (subscriber, dispatch)
}

/// Routes panics through tracing (one structured line, no raw stderr) and records the message
/// for [`take_last_panic`]. With `keep_default`, the default hook runs too (tests want the
/// failure text on stderr). The first call wins.
pub fn install_panic_hook(keep_default: bool) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if keep_default {
                default(info);
            }
            let message = panic_message(info.payload());
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(panic.message = %message, panic.location = %location, "panic");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(message));
        }));
    });
}

/// The message of the last panic on this thread, if one happened since the last call.
pub fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Log lines kept in memory, for tests that assert on what was (or was not) logged.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Every JSON line written so far (lines that are not JSON are skipped).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.contents()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once per process, a JSON subscriber at `debug` that writes into one shared
/// [`LogCapture`], and returns it. Tests running in one process share it, so each test looks
/// for its own ids in it.
pub fn capture() -> LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let writer = capture.clone();
            install_panic_hook(true);
            let settings = LogSettings {
                format: LogFormat::Json,
                level: "debug,h2=info,hyper=info,tokio_postgres=info".to_string(),
            };
            init(
                &settings,
                None,
                Some(BoxMakeWriter::new(move || writer.clone())),
            );
            capture
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capturing(
        traces: Option<&crate::trace::Exporter>,
    ) -> (
        impl tracing::Subscriber,
        crate::trace::DispatchSlot,
        LogCapture,
    ) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let (subscriber, dispatch) = layered(
            EnvFilter::new("info"),
            LogFormat::Json,
            traces,
            Some(BoxMakeWriter::new(move || writer.clone())),
        );
        (subscriber, dispatch, capture)
    }

    #[test]
    fn without_traces_only_the_spans_logs_need_are_built() {
        let (subscriber, dispatch, logs) = capturing(None);
        tracing::subscriber::with_default(subscriber, || {
            dispatch.fill();
            // The trace-only spans are disabled: never built, their fields never evaluated.
            assert!(tracing::debug_span!("ingest.flush", items = 1).is_disabled());
            assert!(crate::db::statement("ingest.commit").is_disabled());
            // The request span is built: its id is on each line.
            let request =
                crate::trace::server_span("r-1", "GET", &awc::http::header::HeaderMap::new());
            assert!(!request.is_disabled());
            request.in_scope(|| {
                assert!(crate::trace::current_ids().is_none());
                assert!(!crate::trace::Parent::current().is_sampled());
                tracing::info!("inside");
            });
        });
        let lines = logs.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["spans"][0]["request_id"], "r-1");
        assert!(lines[0].get("trace_id").is_none());
    }

    #[test]
    fn with_traces_each_line_under_a_span_carries_its_ids() {
        // Nothing listens there: the exports fail, which is not what this test looks at.
        let exporter = crate::trace::Exporter::from_vars(|name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:9".to_string())
        })
        .expect("valid")
        .expect("on");
        let (subscriber, dispatch, logs) = capturing(Some(&exporter));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            dispatch.fill();
            let flush = tracing::debug_span!("ingest.flush", items = 1);
            assert!(!flush.is_disabled(), "trace-only spans are built");
            let ids = flush.in_scope(|| {
                tracing::info!("inside");
                crate::trace::current_ids().expect("ids inside a span")
            });
            tracing::info!("outside");
            ids
        });
        let lines = logs.json_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["trace_id"], trace_id.to_string());
        assert_eq!(lines[0]["span_id"], span_id.to_string());
        assert_eq!(lines[0]["message"], "inside");
        assert!(lines[1].get("trace_id").is_none(), "no span, no ids");
        exporter.shutdown();
    }
}
