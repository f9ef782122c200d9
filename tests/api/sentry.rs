//! Sentry SDKs sending to observe: DSNs, `/api/{id}/envelope/` and `/store/`, authentication
//! as SDKs send it, compressed bodies, what each item type becomes (error groups, API
//! requests, or dropped), rate limits SDKs understand, and reopening a resolved group.
//!
//! The bodies are envelopes as the official SDKs write them (`tests/fixtures/sentry/`), with
//! their DSN replaced by the test's and their times moved to now (retention refuses old ones).

use std::io::Write;

use awc::http::Method;
use serde_json::{json, Value};

use crate::helpers::{call, sdk, send, spawn_app, Reply, Sdk, TestApp};

/// A fixture's bytes.
fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sentry")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The DSN's public key and project number.
fn dsn_parts(dsn: &str) -> (String, String) {
    let (_, rest) = dsn.split_once("://").unwrap();
    let (key, host_and_path) = rest.split_once('@').unwrap();
    let number = host_and_path.rsplit('/').next().unwrap();
    (key.to_string(), number.to_string())
}

/// A time moved by `shift` seconds, in the form it came in (Unix seconds or RFC 3339).
fn shifted(value: &Value, shift: f64) -> Option<Value> {
    if let Some(secs) = value.as_f64() {
        return Some(json!(secs + shift));
    }
    let text = value.as_str()?;
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc())
        })
        .ok()?;
    let moved = at + chrono::Duration::milliseconds((shift * 1000.0) as i64);
    Some(json!(
        moved.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
}

/// Seconds of a time value (Unix seconds or RFC 3339).
fn seconds(value: &Value) -> Option<f64> {
    shifted(value, 0.0).and_then(|v| {
        v.as_f64().or_else(|| {
            let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
            Some(t.timestamp_micros() as f64 / 1e6)
        })
    })
}

/// Moves an event's times (`timestamp`, `start_timestamp`) so that it ended just now.
fn moved_to_now(doc: &mut Value) {
    let Some(end) = doc.get("timestamp").and_then(seconds) else {
        return;
    };
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let shift = now - 1.0 - end;
    for field in ["timestamp", "start_timestamp"] {
        if let Some(moved) = doc.get(field).and_then(|v| shifted(v, shift)) {
            doc[field] = moved;
        }
    }
}

/// A fixture envelope with the DSN `dsn` in its header and its events moved to now, each item
/// in the form it came in (with `length` or newline-delimited); `edit` may change each JSON
/// payload further.
fn envelope_with(name: &str, dsn: &str, edit: impl Fn(&mut Value)) -> Vec<u8> {
    let raw = fixture(name);
    let mut out = Vec::new();
    let (header, mut rest) = split_line(&raw);
    let mut header: Value = serde_json::from_slice(header).unwrap();
    if header.get("dsn").is_some() {
        header["dsn"] = json!(dsn);
    }
    out.extend_from_slice(header.to_string().as_bytes());
    out.push(b'\n');
    while !rest.is_empty() {
        let (item_header, after) = split_line(rest);
        if item_header.is_empty() {
            rest = after;
            continue;
        }
        let mut item_header: Value = serde_json::from_slice(item_header).unwrap();
        let (payload, after) = match item_header.get("length").and_then(Value::as_u64) {
            Some(n) => {
                let (payload, after) = after.split_at(n as usize);
                (payload, after.strip_prefix(b"\n").unwrap_or(after))
            }
            None => split_line(after),
        };
        let payload = match serde_json::from_slice::<Value>(payload) {
            Ok(mut doc) if doc.is_object() && item_header["type"] != "client_report" => {
                moved_to_now(&mut doc);
                edit(&mut doc);
                doc.to_string().into_bytes()
            }
            _ => payload.to_vec(),
        };
        if item_header.get("length").is_some() {
            item_header["length"] = json!(payload.len());
        }
        out.extend_from_slice(item_header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&payload);
        out.push(b'\n');
        rest = after;
    }
    out
}

pub(crate) fn envelope(name: &str, dsn: &str) -> Vec<u8> {
    envelope_with(name, dsn, |_| {})
}

/// The bytes up to the next newline, and those after it.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

/// `X-Sentry-Auth` as the Python SDK writes it.
fn sentry_auth(key: &str) -> String {
    format!("Sentry sentry_key={key}, sentry_version=7, sentry_client=sentry.python.fastapi/2.19.2")
}

/// POSTs an envelope as the Python SDK does: the key in `X-Sentry-Auth`.
pub(crate) async fn post_envelope(app: &TestApp, dsn: &str, body: Vec<u8>) -> Reply {
    let (key, number) = dsn_parts(dsn);
    send(
        app.req(Method::POST, &format!("/api/{number}/envelope/"))
            .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
            .insert_header(("content-type", "application/x-sentry-envelope")),
        Some(body),
    )
    .await
}

async fn get(app: &TestApp, sdk: &Sdk, path: &str) -> Value {
    let reply = call(app, Method::GET, path, Some(&sdk.account.token), None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    reply.json()
}

/// The project's error groups (every status).
async fn groups(app: &TestApp, sdk: &Sdk) -> Vec<Value> {
    let list = get(
        app,
        sdk,
        &format!("/projects/{}/errors?status=all&from=24h", sdk.project),
    )
    .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn group_detail(app: &TestApp, sdk: &Sdk, group: &Value) -> Value {
    get(
        app,
        sdk,
        &format!(
            "/projects/{}/errors/{}?from=24h",
            sdk.project,
            group["id"].as_str().unwrap()
        ),
    )
    .await
}

fn assert_stored(reply: &Reply, id: &str) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({ "id": id }), "{}", reply.text);
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], code, "{}", reply.text);
}

#[actix_web::test]
async fn every_key_has_a_dsn_the_sentry_sdks_accept() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    // `{scheme}://{key}@{host}:{port}/{numeric_id}` from the server's public URL.
    let (key, number) = dsn_parts(&sdk.dsn);
    assert_eq!(
        sdk.dsn,
        format!(
            "{}/{number}",
            app.address.replacen("://", &format!("://{key}@"), 1)
        )
    );
    // The JavaScript SDK's DSN pattern (its `dsn.ts`), and its check that the id is digits.
    let pattern =
        regex_lite::Regex::new(r"^(?:(\w+):)//(?:(\w+)(?::(\w+)?)?@)([\w.-]+)(?::(\d+))?/(.+)")
            .unwrap();
    let caps = pattern
        .captures(&sdk.dsn)
        .expect("the JavaScript SDK parses the DSN");
    assert_eq!(&caps[2], key);
    assert!(caps[6].bytes().all(|b| b.is_ascii_digit()), "{}", &caps[6]);
    // The obs_ key itself would not fit there: it may hold `-`.
    assert!(!sdk.dsn.contains(&sdk.key));

    // The key list shows it at any time; the project detail shows its number and DSN.
    let keys = get(&app, &sdk, &format!("/projects/{}/api-keys", sdk.project)).await;
    assert_eq!(keys["items"][0]["dsn"], sdk.dsn.as_str());
    let project = get(&app, &sdk, &format!("/projects/{}", sdk.project)).await;
    assert_eq!(project["numeric_id"].to_string(), number);
    assert_eq!(project["dsn"], sdk.dsn.as_str());
    // Another project has another number.
    let other = crate::helpers::create_project(&app, &sdk.account.token, "other").await;
    let other = get(&app, &sdk, &format!("/projects/{other}")).await;
    assert_ne!(other["numeric_id"].to_string(), number);
    assert!(
        other.get("dsn").is_none() || other["dsn"].is_null(),
        "{other}"
    );
}

#[actix_web::test]
async fn a_python_exception_with_a_chained_cause_becomes_one_group_with_its_frames() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("python_chained.envelope", &sdk.dsn),
    )
    .await;
    assert_stored(&reply, "6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51");

    let groups = groups(&app, &sdk).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    // The chain's last exception is the one raised: `KeyError` from the `ValueError`.
    assert_eq!(groups[0]["type"], "KeyError");
    assert_eq!(groups[0]["message"], "'sku-42'");
    assert_eq!(groups[0]["level"], "error");
    let detail = group_detail(&app, &sdk, &groups[0]).await;
    let latest = &detail["recent_occurrences"][0];
    let frames = latest["stack_trace"].as_array().expect("frames");
    let last = frames.last().unwrap();
    assert_eq!(last["in_app"], true, "{last}");
    assert!(
        last["function"].is_string() && last["lineno"].is_u64(),
        "{last}"
    );
    assert!(last["module"].is_string(), "{last}");
    assert_eq!(latest["environment"], "production");
    assert_eq!(latest["release"], "shop@1.4.2");
    assert!(latest["user_id"].is_string(), "{latest}");
    // What Sentry sends beyond observe's fields is kept with the occurrence.
    let context = &latest["context"];
    assert_eq!(context["exceptions"][0]["type"], "ValueError", "{context}");
    assert_eq!(context["platform"], "python");
    assert!(
        context["breadcrumbs"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{context}"
    );
    assert_eq!(context["event_id"], "6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51");
    let headers = context["request"]["headers"]
        .to_string()
        .to_ascii_lowercase();
    assert!(!headers.contains("cookie"), "a cookie was kept: {headers}");

    // The same envelope gzip-compressed (as the Python SDK sends by default) is the same
    // error: a second occurrence of the group.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&envelope("python_chained.envelope", &sdk.dsn))
        .unwrap();
    let (key, number) = dsn_parts(&sdk.dsn);
    let reply = send(
        app.req(Method::POST, &format!("/api/{number}/envelope/"))
            .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
            .insert_header(("content-encoding", "gzip")),
        Some(gz.finish().unwrap()),
    )
    .await;
    assert_stored(&reply, "6f4a2d3cb5e84b0c9a1c2f0e8d7b6a51");
    let groups = crate::sentry::groups(&app, &sdk).await;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["occurrences"], 2, "{:?}", groups[0]);
}

#[actix_web::test]
async fn every_encoding_sdks_use_is_read() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (key, number) = dsn_parts(&sdk.dsn);
    let plain = envelope("python_message.envelope", &sdk.dsn);
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(&plain).unwrap();
    let zstd =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (encoding, body) in [
        ("identity", plain.clone()),
        ("deflate", deflate.finish().unwrap()),
        ("zstd", zstd),
        ("br", brotli_stored(&plain)),
    ] {
        let reply = send(
            app.req(Method::POST, &format!("/api/{number}/envelope/"))
                .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
                .insert_header(("content-encoding", encoding)),
            Some(body),
        )
        .await;
        assert_stored(&reply, "0b8e6c1f4d2a4e3b9c7d5a1f2e3d4c5b");
    }
    let groups = groups(&app, &sdk).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["occurrences"], 4);
    // Not an encoding observe reads: refused, nothing stored.
    let reply = send(
        app.req(Method::POST, &format!("/api/{number}/envelope/"))
            .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
            .insert_header(("content-encoding", "compress")),
        Some(plain),
    )
    .await;
    assert_error(&reply, 415, "unsupported_encoding");
}

/// A brotli stream of uncompressed meta-blocks (RFC 7932 §9.2): valid brotli that any decoder
/// must read, made without a brotli encoder.
fn brotli_stored(data: &[u8]) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        fn align(&mut self) {
            if self.n > 0 {
                self.put(0, 8 - self.n);
            }
        }
    }
    let mut w = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    w.put(0, 1); // WBITS = 16
    for chunk in data.chunks(65_536) {
        w.put(0, 1); // ISLAST = 0
        w.put(0, 2); // MNIBBLES = 4
        w.put(chunk.len() as u64 - 1, 16); // MLEN - 1
        w.put(1, 1); // ISUNCOMPRESSED
        w.align();
        w.out.extend_from_slice(chunk);
    }
    w.put(1, 1); // ISLAST
    w.put(1, 1); // ISLASTEMPTY
    w.align();
    w.out
}

#[actix_web::test]
async fn a_browser_error_with_the_key_in_the_query_keeps_the_sdks_fingerprint() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (key, number) = dsn_parts(&sdk.dsn);
    // As @sentry/browser sends: the key in the query, `text/plain` (no CORS preflight).
    let browser = |body: Vec<u8>| {
        send(
            app.req(
                Method::POST,
                &format!("/api/{number}/envelope/?sentry_key={key}&sentry_version=7&sentry_client=sentry.javascript.browser%2F9.5.0"),
            )
            .insert_header(("content-type", "text/plain;charset=UTF-8"))
            .insert_header(("origin", "https://shop.example")),
            Some(body),
        )
    };
    let reply = browser(envelope("javascript_browser.envelope", &sdk.dsn)).await;
    assert_stored(&reply, "e2c1a0f9b8d74c6e9a5b3d1f0e2c4a6b");
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    // New line numbers: the same group (`{{ default }}` is observe's own fingerprint, which
    // ignores line numbers).
    let moved_lines = |doc: &mut Value| {
        for frame in doc["exception"]["values"][0]["stacktrace"]["frames"]
            .as_array_mut()
            .unwrap()
        {
            frame["lineno"] = json!(frame["lineno"].as_u64().unwrap() + 10);
        }
    };
    let reply = browser(envelope_with(
        "javascript_browser.envelope",
        &sdk.dsn,
        moved_lines,
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let first = groups(&app, &sdk).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["type"], "TypeError");
    assert_eq!(first[0]["occurrences"], 2);
    // Without the SDK's fingerprint (`["{{ default }}", "checkout"]`), the same error is
    // another group: the SDK's fingerprint was used.
    let reply = browser(envelope_with(
        "javascript_browser.envelope",
        &sdk.dsn,
        |doc| {
            doc.as_object_mut().unwrap().remove("fingerprint");
        },
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(groups(&app, &sdk).await.len(), 2);
    // Its frames: file, line and column, as the browser SDK parsed them.
    let detail = group_detail(&app, &sdk, &first[0]).await;
    let frames = detail["recent_occurrences"][0]["stack_trace"].to_string();
    assert!(
        frames.contains("https://shop.example/assets/app.js") && frames.contains("colno"),
        "{frames}"
    );
    assert_eq!(detail["recent_occurrences"][0]["user_id"], "1042");
    assert_eq!(
        detail["recent_occurrences"][0]["url"],
        "https://shop.example/checkout"
    );
}

#[actix_web::test]
async fn messages_become_errors_grouped_by_their_template() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    for (payment, order) in [("pi_3Nx", 42), ("pi_9Zq", 7)] {
        let body = envelope_with("python_message.envelope", &sdk.dsn, |doc| {
            doc["logentry"]["params"] = json!([payment, order]);
            doc["logentry"]["formatted"] =
                json!(format!("payment {payment} failed for order {order}"));
        });
        assert_eq!(post_envelope(&app, &sdk.dsn, body).await.status, 200);
    }
    let groups = groups(&app, &sdk).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["occurrences"], 2);
    assert_eq!(groups[0]["type"], "Message");
}

#[actix_web::test]
async fn http_server_transactions_fill_api_monitoring() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    for name in ["transaction_fastapi.envelope", "transaction_node.envelope"] {
        let reply = post_envelope(&app, &sdk.dsn, envelope(name, &sdk.dsn)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
    }
    let log = get(
        &app,
        &sdk,
        &format!("/projects/{}/api-requests?from=24h", sdk.project),
    )
    .await;
    let mut seen: Vec<(String, String, u64)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["duration_ms"].as_f64().unwrap() > 0.0, "{r}");
            (
                r["method"].as_str().unwrap().to_string(),
                r["route"].as_str().unwrap().to_string(),
                r["status_code"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), "/items/:id".to_string(), 404),
            ("GET".to_string(), "/items/{item_id}".to_string(), 200),
        ]
    );
    // A transaction is no error.
    assert!(groups(&app, &sdk).await.is_empty());
}

#[actix_web::test]
async fn sessions_client_reports_and_attachments_are_accepted_and_dropped() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    for name in ["session.envelope", "client_report.envelope"] {
        let reply = post_envelope(&app, &sdk.dsn, envelope(name, &sdk.dsn)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
    }
    // An item type observe has never heard of.
    let unknown = b"{}\n{\"type\":\"profile_chunk\",\"length\":2}\n{}\n".to_vec();
    assert_eq!(post_envelope(&app, &sdk.dsn, unknown).await.status, 200);
    assert!(groups(&app, &sdk).await.is_empty());
    let (_, metrics) = app.get_text("/metrics").await;
    for series in [
        r#"observe_sentry_items_total{outcome="dropped",type="session"} 1"#,
        r#"observe_sentry_items_total{outcome="dropped",type="client_report"} 1"#,
        r#"observe_sentry_items_total{outcome="dropped",type="attachment"} 1"#,
        r#"observe_sentry_items_total{outcome="dropped",type="other"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in /metrics");
    }
}

#[actix_web::test]
async fn the_old_store_endpoint_takes_one_event() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (key, number) = dsn_parts(&sdk.dsn);
    let mut event: Value = serde_json::from_slice(&fixture("store_python.json")).unwrap();
    event["timestamp"] = json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string());
    let reply = send(
        app.req(Method::POST, &format!("/api/{number}/store/"))
            .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
            .insert_header(("content-type", "application/json")),
        Some(event.to_string().into_bytes()),
    )
    .await;
    assert_stored(&reply, "9f8e7d6c5b4a439281706f5e4d3c2b1a");
    let groups = groups(&app, &sdk).await;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["type"], "ZeroDivisionError");
    let detail = group_detail(&app, &sdk, &groups[0]).await;
    let latest = &detail["recent_occurrences"][0];
    assert_eq!(latest["user_id"], "cron");
    assert_eq!(latest["tags"]["queue"], "reports");
    assert_eq!(latest["environment"], "staging");
}

#[actix_web::test]
async fn keys_are_taken_from_header_query_or_envelope_and_must_be_the_projects() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (key, number) = dsn_parts(&sdk.dsn);
    let body = || envelope("python_message.envelope", &sdk.dsn);
    let post = |path: String, auth: Option<String>, body: Vec<u8>| {
        let mut req = app.req(Method::POST, &path);
        if let Some(auth) = auth {
            req = req.insert_header(("X-Sentry-Auth", auth));
        }
        send(req, Some(body))
    };
    let path = format!("/api/{number}/envelope/");

    // Only the DSN in the envelope's header (as the JavaScript SDK's tunnel sends).
    assert_eq!(post(path.clone(), None, body()).await.status, 200);
    // The obs_ key itself works as the key too.
    assert_eq!(
        post(path.clone(), Some(sentry_auth(&sdk.key)), body())
            .await
            .status,
        200
    );
    // No key anywhere.
    let bare = b"{}\n{\"type\":\"event\"}\n{\"message\":\"x\"}\n".to_vec();
    assert_error(
        &post(path.clone(), None, bare).await,
        401,
        "invalid_api_key",
    );
    // An unknown key.
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_error(
        &post(path.clone(), Some(sentry_auth(unknown)), body()).await,
        401,
        "invalid_api_key",
    );
    // A key of another project (here of another organisation), sent to this project.
    let other = crate::helpers::sdk(&app).await;
    let (other_key, other_number) = dsn_parts(&other.dsn);
    assert_error(
        &post(path.clone(), Some(sentry_auth(&other_key)), body()).await,
        403,
        "forbidden",
    );
    assert_error(
        &post(
            format!("/api/{other_number}/envelope/?sentry_key={key}"),
            None,
            body(),
        )
        .await,
        403,
        "forbidden",
    );
    // A project id that is not a number names nothing.
    assert_eq!(
        post(
            format!("/api/{}/envelope/", sdk.project),
            Some(sentry_auth(&key)),
            body()
        )
        .await
        .status,
        404
    );
    // A revoked key stops at once.
    let reply = call(
        &app,
        Method::DELETE,
        &format!("/projects/{}/api-keys/{}", sdk.project, sdk.key_id),
        Some(&sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_error(
        &post(path.clone(), Some(sentry_auth(&key)), body()).await,
        401,
        "invalid_api_key",
    );
    assert_error(&post(path, None, body()).await, 401, "invalid_api_key");
    // Two stored: the envelope-DSN one and the obs_-key one.
    assert_eq!(groups(&app, &sdk).await[0]["occurrences"], 2);
    assert!(
        groups(&app, &other).await.is_empty(),
        "nothing reached the other project"
    );
    // Refused keys and projects are not counted as malformed items.
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        !metrics.contains(r#"kind="sentry",outcome="rejected",reason="malformed""#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_rate_limited_sdk_is_told_the_category_to_back_off() {
    // 3 errors per key per minute: a budget refills one every 20 s, far slower than the test.
    let app = crate::helpers::spawn_app_with(|s| s.tiers.hobby.errors_per_minute = 3, None).await;
    let sdk = sdk(&app).await;
    for n in 0..3 {
        let reply = post_envelope(
            &app,
            &sdk.dsn,
            envelope("python_message.envelope", &sdk.dsn),
        )
        .await;
        assert_eq!(reply.status, 200, "envelope {n}: {}", reply.text);
    }
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("python_message.envelope", &sdk.dsn),
    )
    .await;
    assert_error(&reply, 429, "rate_limited");
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        reply.header("x-sentry-rate-limits"),
        Some(format!("{retry}:error:key"))
    );
    // Transactions are another category with a budget of their own.
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("transaction_node.envelope", &sdk.dsn),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(groups(&app, &sdk).await[0]["occurrences"], 3);
}

#[actix_web::test]
async fn a_resolved_group_reopens_when_the_sdk_sends_it_again() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let body = || envelope("javascript_browser.envelope", &sdk.dsn);
    assert_eq!(post_envelope(&app, &sdk.dsn, body()).await.status, 200);
    let group = groups(&app, &sdk).await.remove(0);
    let reply = call(
        &app,
        Method::POST,
        &format!(
            "/projects/{}/errors/{}/resolve",
            sdk.project,
            group["id"].as_str().unwrap()
        ),
        Some(&sdk.account.token),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(groups(&app, &sdk).await[0]["status"], "resolved");
    assert_eq!(post_envelope(&app, &sdk.dsn, body()).await.status, 200);
    let again = groups(&app, &sdk).await.remove(0);
    assert_eq!(again["id"], group["id"]);
    assert_eq!(again["status"], "unresolved", "{again}");
}

#[actix_web::test]
async fn a_malformed_envelope_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    // An event and a broken second item: the whole envelope is refused.
    let mut body = envelope("python_message.envelope", &sdk.dsn);
    body.extend_from_slice(b"{\"type\":\"event\",\"length\":9999}\n{}\n");
    let reply = post_envelope(&app, &sdk.dsn, body).await;
    assert_error(&reply, 400, "bad_request");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("envelope"),
        "{}",
        reply.text
    );
    let reply = post_envelope(&app, &sdk.dsn, b"not an envelope".to_vec()).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(groups(&app, &sdk).await.is_empty());
}

#[actix_web::test]
async fn an_organisation_over_its_monthly_quota_is_told_so_per_category() {
    let app = crate::helpers::spawn_app_with(
        |s| s.tiers.hobby.errors_per_month = observe_core::config::Limit::Max(1),
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("python_message.envelope", &sdk.dsn),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = post_envelope(
        &app,
        &sdk.dsn,
        envelope("python_message.envelope", &sdk.dsn),
    )
    .await;
    assert_error(&reply, 429, "quota_exceeded");
    let retry = reply.header("retry-after").expect("Retry-After");
    assert_eq!(
        reply.header("x-sentry-rate-limits"),
        Some(format!("{retry}:error:organization:quota_exceeded"))
    );
    assert_eq!(groups(&app, &sdk).await[0]["occurrences"], 1);
}

#[actix_web::test]
async fn hostile_bodies_cost_no_memory_they_did_not_declare() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (key, number) = dsn_parts(&sdk.dsn);
    // A zstd frame that declares an 88 MiB window (a decompression bomb's first bytes): refused
    // from its header, before a decoder sets any window aside.
    let mut bomb = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x83];
    bomb.extend(std::iter::repeat_n(0u8, 3000));
    let reply = send(
        app.req(Method::POST, &format!("/api/{number}/envelope/"))
            .insert_header(("X-Sentry-Auth", sentry_auth(&key)))
            .insert_header(("content-encoding", "zstd")),
        Some(bomb.clone()),
    )
    .await;
    assert_error(&reply, 400, "bad_request");
    assert!(reply.text.contains("window"), "{}", reply.text);
    // Without a valid key the body is not even read: 401, whatever it holds.
    let reply = send(
        app.req(Method::POST, &format!("/api/{number}/envelope/"))
            .insert_header((
                "X-Sentry-Auth",
                sentry_auth("0123456789abcdef0123456789abcdef"),
            ))
            .insert_header(("content-encoding", "zstd")),
        Some(bomb),
    )
    .await;
    assert_error(&reply, 401, "invalid_api_key");
    // A long exception chain whose links all name one thread stack.
    let frames: Vec<Value> = (0..500)
        .map(|n| json!({"function": format!("f{n}"), "module": "m", "lineno": n, "in_app": true}))
        .collect();
    let chain: Vec<Value> = (0..2_000)
        .map(|n| json!({"type": format!("E{n}"), "value": "v", "thread_id": 1}))
        .collect();
    let event = json!({
        "exception": {"values": chain},
        "threads": {"values": [{"id": 1, "stacktrace": {"frames": frames}}]},
    })
    .to_string();
    let body = format!(
        "{{}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n",
        event.len()
    );
    let reply = post_envelope(&app, &sdk.dsn, body.into_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let groups = groups(&app, &sdk).await;
    let detail = group_detail(&app, &sdk, &groups[0]).await;
    let others = detail["recent_occurrences"][0]["context"]["exceptions"]
        .as_array()
        .unwrap()
        .len();
    assert!(others < 10, "{others} exceptions of the chain kept");
}

#[actix_web::test]
async fn an_envelope_of_events_and_transactions_is_refused_whole() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let mut body = envelope("python_message.envelope", &sdk.dsn);
    let transaction = envelope("transaction_node.envelope", &sdk.dsn);
    // The transaction's items, after its envelope header line.
    let items = transaction.splitn(2, |b| *b == b'\n').nth(1).unwrap();
    body.extend_from_slice(items);
    let reply = post_envelope(&app, &sdk.dsn, body).await;
    assert_error(&reply, 400, "bad_request");
    assert!(groups(&app, &sdk).await.is_empty());
    let log = get(
        &app,
        &sdk,
        &format!("/projects/{}/api-requests?from=24h", sdk.project),
    )
    .await;
    assert_eq!(log["items"], json!([]));
}

#[actix_web::test]
async fn an_obs_key_is_never_taken_from_the_url() {
    let app = spawn_app().await;
    let sdk = sdk(&app).await;
    let (_, number) = dsn_parts(&sdk.dsn);
    let reply = send(
        app.req(
            Method::POST,
            &format!("/api/{number}/envelope/?sentry_key={}", sdk.key),
        ),
        Some(envelope("python_message.envelope", &sdk.dsn)),
    )
    .await;
    assert_error(&reply, 401, "invalid_api_key");
    assert!(reply.text.contains("URL"), "{}", reply.text);
    assert!(groups(&app, &sdk).await.is_empty());
}

#[actix_web::test]
async fn a_key_with_both_budgets_spent_is_refused_before_its_body() {
    let app = crate::helpers::spawn_app_with(
        |s| {
            s.tiers.hobby.errors_per_minute = 1;
            s.tiers.hobby.api_requests_per_minute = 1;
        },
        None,
    )
    .await;
    let sdk = sdk(&app).await;
    for name in ["python_message.envelope", "transaction_node.envelope"] {
        let reply = post_envelope(&app, &sdk.dsn, envelope(name, &sdk.dsn)).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
    }
    // Not even an envelope: refused for the limits before the body is looked at.
    let reply = post_envelope(&app, &sdk.dsn, b"not an envelope".to_vec()).await;
    assert_error(&reply, 429, "rate_limited");
    let retry = reply.header("retry-after").unwrap();
    assert_eq!(
        reply.header("x-sentry-rate-limits"),
        Some(format!("{retry}:error;transaction:key"))
    );
}
