//! Traces: the real binary exports OpenTelemetry spans over OTLP/HTTP to a fake collector
//! ([`FakeCollector`], which decodes them with the protocol's own types) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, continues a caller's `traceparent`, and puts the trace
//! and span ids on the request's log lines; without the variable no exporter thread runs and
//! no line carries a trace id.

use serde_json::{json, Value};

use crate::helpers::TEST_PASSWORD;
use crate::helpers::{eventually, fresh_database, test_settings};
use crate::mailer::FakeResend;
use crate::support::binary::{post_json, sdk_with_dsn_at, Observe};
use crate::support::otlp::{FakeCollector, ReceivedSpan};

/// The batch processor's thread, as `/proc` shows it (names are cut to 15 bytes).
const EXPORTER_THREAD: &str = "OpenTelemetry.T";

/// The names of the process's threads.
fn threads(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc") {
        let comm = task.expect("task").path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_string());
        }
    }
    names
}

/// The log lines of one request (its id is a field of the `request` span on each).
fn lines_of(observe: &Observe, request_id: &str) -> Vec<Value> {
    observe
        .lines
        .borrow()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id))
        })
        .collect()
}

/// The `request completed` line of a request, once observe's stdout has been read that far.
async fn completed_line(observe: &Observe, request_id: &str) -> Value {
    let found = eventually(10, || async {
        lines_of(observe, request_id)
            .iter()
            .any(|l| l["message"] == "request completed")
    })
    .await;
    let lines = lines_of(observe, request_id);
    assert!(
        found,
        "no request completed line for {request_id}: {lines:#?}"
    );
    lines
        .into_iter()
        .find(|l| l["message"] == "request completed")
        .unwrap_or_default()
}

/// Posts one event with the given request id (and `traceparent`): the answer's status.
async fn post_event(base: &str, key: &str, request_id: &str, traceparent: Option<&str>) -> u16 {
    let mut req = awc::Client::default()
        .post(format!("{base}/ingest/events"))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("X-Request-Id", request_id));
    if let Some(traceparent) = traceparent {
        req = req.insert_header(("traceparent", traceparent));
    }
    let res = req
        .send_json(&json!({"event": "signup", "visitor_id": request_id}))
        .await
        .expect("ingest");
    res.status().as_u16()
}

/// The binary exporting every trace to `collector` at once, with `env` on top.
async fn traced(db: &str, collector: &FakeCollector, env: &[(&str, &str)]) -> Observe {
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    all.extend_from_slice(env);
    Observe::start_with(db, &all).await
}

/// `span` and its ancestors among `spans`, nearest first.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut chain = vec![span];
    while let Some(parent) = spans
        .iter()
        .find(|s| s.span_id == chain[chain.len() - 1].parent_span_id)
    {
        chain.push(parent);
    }
    chain
}

#[actix_web::test]
async fn a_traced_request_has_its_flush_and_statements_and_its_ids_in_its_logs() {
    let db = fresh_database(&test_settings().database).await;
    let collector = FakeCollector::start().await;
    let observe = traced(
        &db,
        &collector,
        &[
            // Concurrent requests wait for each other, so one flush commits several.
            ("OBSERVE__INGEST__FLUSH_INTERVAL_MS", "100"),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", observe.port);
    let pid = observe.child.id().expect("pid");
    assert!(
        threads(pid).iter().any(|t| t == EXPORTER_THREAD),
        "the exporter thread runs: {:?}",
        threads(pid)
    );
    let (_, key, _) = sdk_with_dsn_at(&awc::Client::default(), &base).await;

    // A caller's trace is continued.
    let caller_trace = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let request_id = format!("traced-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        post_event(&base, &key, &request_id, Some(&traceparent)).await,
        202
    );

    let complete = eventually(20, || async {
        let spans = collector.trace(&caller_trace);
        spans.iter().any(|s| s.name == "ingest.flush")
            && spans.iter().any(|s| s.name == "ingest.commit")
            && spans.iter().any(|s| s.name == "POST /ingest/events")
    })
    .await;
    let spans = collector.trace(&caller_trace);
    assert!(complete, "spans of the trace: {spans:#?}");

    let server = spans
        .iter()
        .find(|s| s.name == "POST /ingest/events")
        .expect("request span");
    assert_eq!(
        server.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(server.kind, 2, "a server span");
    assert_eq!(server.service, "observe");
    assert_eq!(server.attributes["http.route"], "/ingest/events");
    assert_eq!(server.attributes["http.request.method"], "POST");
    assert_eq!(server.attributes["http.response.status_code"], "202");

    let flush = spans
        .iter()
        .find(|s| s.name == "ingest.flush")
        .expect("flush span");
    assert_eq!(
        flush.parent_span_id, server.span_id,
        "the flush is the request's child"
    );
    assert_eq!(flush.attributes["items"], "1");
    assert_eq!(flush.attributes["requests"], "1");
    assert!(flush.attributes.contains_key("commit_ms"), "{flush:?}");

    // The SQL: the COPY and the COMMIT, each a client span under the flush, named by
    // statement, with no parameter in sight.
    for name in ["ingest.copy_events", "ingest.commit"] {
        let statement = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"));
        assert_eq!(statement.kind, 3, "{name} is a client span");
        assert_eq!(statement.attributes["db.system.name"], "postgresql");
        let chain = ancestry(&spans, statement);
        assert!(
            chain.iter().any(|s| s.span_id == flush.span_id),
            "{name} is under the flush: {chain:#?}"
        );
        assert!(
            !statement
                .attributes
                .values()
                .any(|v| v.contains(&request_id)),
            "no parameter is recorded: {statement:?}"
        );
    }

    // The request's log lines carry its trace id and its span id.
    let completed = completed_line(&observe, &request_id).await;
    let lines = lines_of(&observe, &request_id);
    assert_eq!(completed["trace_id"], caller_trace.as_str());
    assert_eq!(completed["span_id"], server.span_id.as_str());
    assert!(lines.iter().all(|l| l["trace_id"] == caller_trace.as_str()));

    // Requests committed together: the flush is the child of one and links to the others,
    // so each request's trace leads to the flush that committed it.
    let traces: Vec<(String, String)> = (0..16)
        .map(|_| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
            (id, span)
        })
        .collect();
    let sends = traces.iter().enumerate().map(|(i, (trace, span))| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            let traceparent = format!("00-{trace}-{span}-01");
            post_event(
                &base,
                &key,
                &format!("together-{i}-{trace}"),
                Some(&traceparent),
            )
            .await
        }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let reaches_its_flush = |spans: &[ReceivedSpan], trace: &str| {
        let Some(server) = spans
            .iter()
            .find(|s| s.trace_id == trace && s.name == "POST /ingest/events")
        else {
            return false;
        };
        spans.iter().any(|s| {
            s.name == "ingest.flush"
                && (s.parent_span_id == server.span_id
                    || s.links
                        .contains(&(trace.to_string(), server.span_id.clone())))
        })
    };
    let all_reached = eventually(20, || async {
        let spans = collector.spans();
        traces
            .iter()
            .all(|(trace, _)| reaches_its_flush(&spans, trace))
    })
    .await;
    let linked = collector.spans().iter().any(|s| {
        s.name == "ingest.flush" && s.attributes["requests"] != "1" && !s.links.is_empty()
    });
    assert!(
        all_reached && linked,
        "every request's flush is its child or links to it, and one flush links: {:#?}",
        collector
            .spans()
            .iter()
            .filter(|s| s.name == "ingest.flush")
            .collect::<Vec<_>>()
    );

    // Without a traceparent, a new trace: the id on its log line is found among the spans.
    let request_id = format!("untraced-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(post_event(&base, &key, &request_id, None).await, 202);
    let completed = completed_line(&observe, &request_id).await;
    let trace_id = completed["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a trace id on the line: {completed:#}"))
        .to_string();
    assert_ne!(trace_id, caller_trace);
    assert!(
        eventually(20, || async {
            collector
                .trace(&trace_id)
                .iter()
                .any(|s| s.name == "POST /ingest/events" && s.parent_span_id.is_empty())
        })
        .await,
        "the logged trace id is exported as a root request span: {:#?}",
        collector.trace(&trace_id)
    );
}

#[actix_web::test]
async fn without_an_endpoint_no_exporter_runs_and_no_line_has_a_trace_id() {
    let db = fresh_database(&test_settings().database).await;
    let observe = Observe::start(&db).await;
    let base = format!("http://127.0.0.1:{}", observe.port);
    let (_, key, _) = sdk_with_dsn_at(&awc::Client::default(), &base).await;
    let request_id = format!("off-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        post_event(
            &base,
            &key,
            &request_id,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        )
        .await,
        202
    );
    completed_line(&observe, &request_id).await;

    let pid = observe.child.id().expect("pid");
    let names = threads(pid);
    assert!(!names.is_empty());
    assert!(
        !names.iter().any(|t| t.starts_with("OpenTelemetry")),
        "no exporter thread: {names:?}"
    );
    let all: Vec<Value> = observe
        .lines
        .borrow()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        all.iter()
            .all(|l| l.get("trace_id").is_none() && l.get("span_id").is_none()),
        "no trace ids without traces"
    );
    // That the spans existing only for traces are not built when off is checked where it
    // can be seen: telemetry::tests::without_traces_only_the_spans_logs_need_are_built.
}

/// The path and `traceparent` of each request a checked service got.
type Seen = std::sync::Mutex<Vec<(String, Option<String>)>>;

/// A checked service that keeps the `traceparent` of each request, by path.
struct Probed {
    url: String,
    seen: std::sync::Arc<Seen>,
    _server: actix_web::dev::ServerHandle,
}

impl Probed {
    async fn start() -> Self {
        use actix_web::{web, App, HttpRequest, HttpResponse};
        let seen = std::sync::Arc::new(Seen::default());
        let data = web::Data::from(seen.clone());
        let (url, handle) = crate::support::serve!("the checked service", move || {
            App::new().app_data(data.clone()).default_service(web::to(
                |req: HttpRequest, seen: web::Data<Seen>| async move {
                    let traceparent = req
                        .headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock()
                        .unwrap()
                        .push((req.path().to_string(), traceparent));
                    HttpResponse::Ok().body("ok")
                },
            ))
        });
        Self {
            url,
            seen,
            _server: handle,
        }
    }

    fn traceparents(&self, path: &str) -> Vec<Option<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

#[actix_web::test]
async fn a_monitor_check_carries_traceparent_only_when_its_monitor_asks() {
    let db = fresh_database(&test_settings().database).await;
    let collector = FakeCollector::start().await;
    let probed = Probed::start().await;
    let observe = traced(
        &db,
        &collector,
        &[("OBSERVE__MONITORS__ALLOW_PRIVATE_TARGETS", "true")],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", observe.port);
    let (project, _, _) = sdk_with_dsn_at(&awc::Client::default(), &base).await;

    // Two monitors of the service, due now; only the first asks for trace context.
    let (client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix_web::rt::spawn(connection);
    for (path, send) in [("/traced", true), ("/plain", false)] {
        client
            .execute(
                "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds, \
                 send_traceparent, next_check_at) \
                 VALUES ($1::text::uuid, $2, $3, 60, 5, $4, now())",
                &[&project, &path, &format!("{}{path}", probed.url), &send],
            )
            .await
            .expect("insert monitor");
    }
    let both_checked = eventually(30, || async {
        !probed.traceparents("/traced").is_empty() && !probed.traceparents("/plain").is_empty()
    })
    .await;
    assert!(both_checked, "both monitors are checked");
    assert!(
        probed.traceparents("/plain").iter().all(Option::is_none),
        "no trace context unless the monitor asks: {:?}",
        probed.traceparents("/plain")
    );
    let traceparent = probed.traceparents("/traced")[0]
        .clone()
        .expect("the asking monitor's check carries traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, span_id) = (parts[1].to_string(), parts[2].to_string());

    // The header names the check's client span, under the monitor's check span.
    let exported = eventually(20, || async {
        collector
            .trace(&trace_id)
            .iter()
            .any(|s| s.span_id == span_id)
            && collector
                .trace(&trace_id)
                .iter()
                .any(|s| s.name == "monitor.check")
    })
    .await;
    let spans = collector.trace(&trace_id);
    assert!(exported, "the check's spans are exported: {spans:#?}");
    let attempt = spans
        .iter()
        .find(|s| s.span_id == span_id)
        .expect("attempt");
    assert_eq!(attempt.kind, 3, "a client span");
    assert_eq!(attempt.attributes["http.response.status_code"], "200");
    assert_eq!(attempt.attributes["server.address"], "127.0.0.1");
    let check = spans
        .iter()
        .find(|s| s.name == "monitor.check")
        .expect("check");
    assert_eq!(attempt.parent_span_id, check.span_id);
}

#[actix_web::test]
async fn a_call_to_resend_carries_the_trace_of_its_delivery() {
    let db = fresh_database(&test_settings().database).await;
    let collector = FakeCollector::start().await;
    let resend = FakeResend::start(&[], 200).await;
    let observe = traced(
        &db,
        &collector,
        &[
            ("OBSERVE__RESEND__BASE_URL", resend.url.as_str()),
            ("OBSERVE__RESEND__API_KEY", "re_test_key"),
            (
                "OBSERVE__RESEND__FROM_EMAIL",
                "observe tests <tests@observe.invalid>",
            ),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{}", observe.port);
    // A password reset: an email the Mailer sends through Resend.
    let client = awc::Client::default();
    let email = format!("traced-{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = post_json(
        &client,
        &format!("{base}/auth/register"),
        None,
        json!({"email": email, "password": TEST_PASSWORD, "name": "Traced"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_json(
        &client,
        &format!("{base}/auth/forgot-password"),
        None,
        json!({"email": email}),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let sent = eventually(20, || async { !resend.received().is_empty() }).await;
    assert!(sent, "an email reached the fake Resend");
    let traceparent = resend.received()[0]
        .traceparent
        .clone()
        .expect("the call carries traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, span_id) = (parts[1].to_string(), parts[2].to_string());
    let exported = eventually(20, || async {
        collector
            .trace(&trace_id)
            .iter()
            .any(|s| s.span_id == span_id)
    })
    .await;
    let spans = collector.trace(&trace_id);
    assert!(exported, "the call's span is exported: {spans:#?}");
    let call = spans.iter().find(|s| s.span_id == span_id).expect("call");
    assert_eq!(call.name, "resend POST /emails");
    assert_eq!(call.kind, 3, "a client span");
    let delivery = spans
        .iter()
        .find(|s| s.span_id == call.parent_span_id)
        .expect("the call's parent is exported");
    assert_eq!(delivery.name, "mail.deliver");
    resend.stop().await;
}
