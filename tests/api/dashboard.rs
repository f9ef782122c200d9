//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `make test` with `chromium-driver`) driven over WebDriver against the real server. Each test
//! starts its own chromedriver on a free port. Screenshots of each page go to
//! `target/screenshots/` for review.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::{call, spawn_app, TestApp};

/// WebDriver's key codes.
const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";

/// A chromedriver of this test and the browser session it drives.
struct Browser {
    client: Client,
    /// chromedriver's address, for its log endpoint (which fantoccini does not wrap).
    driver_url: String,
    _driver: Child,
}

impl Browser {
    async fn start() -> Self {
        Self::start_with(&["--window-size=1280,900"]).await
    }

    /// A browser with these extra Chromium switches (window size, colour scheme).
    async fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (make test installs Debian's chromium-driver)");
        let mut caps = serde_json::Map::new();
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ];
        args.extend_from_slice(extra);
        let mut options = json!({ "binary": "/usr/bin/chromium", "args": args });
        // A phone: chromedriver's device emulation (a headless window is at least 500 px wide).
        if extra.contains(&"--window-size=390,844") {
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0 },
            });
        }
        caps.insert("goog:chromeOptions".into(), options);
        // The browser console's entries, read back by `console_errors`.
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver_url: url,
                        _driver: driver,
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session: {last:?}");
    }

    /// Waits for an element, then returns it.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn fill(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Waits until the page's text holds `text`.
    async fn wait_for_text(&self, text: &str) {
        for _ in 0..100 {
            let body = self
                .client
                .find(Locator::Css("body"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if body.contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.screenshot("failure").await;
        let errors = self.page_errors().await;
        let console = self.console_errors(&[]).await;
        panic!("the page never showed {text:?} (page errors: {errors:?}; console: {console:?}; target/screenshots/failure.png)");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The browser console's errors since the last call (chromedriver hands each entry out
    /// once): uncaught exceptions, `console.error`, failed loads (a 404 asset, a 4xx/5xx
    /// answer to `fetch`) and Content-Security-Policy refusals, on every page this browser
    /// opened, except entries holding one of `expected` (what a test did on purpose).
    async fn console_errors(&self, expected: &[&str]) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let mut res = awc::Client::default()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .send_json(&json!({ "type": "browser" }))
            .await
            .unwrap();
        let body: serde_json::Value = res.json().limit(1 << 24).await.unwrap();
        let entries = body["value"]
            .as_array()
            .unwrap_or_else(|| panic!("no browser log: {body}"));
        entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| !expected.iter().any(|x| m.contains(x)))
            .map(str::to_string)
            .collect()
    }

    /// Neither the page nor the console reported an error (beyond `expected` ones).
    async fn assert_no_errors(&self, expected: &[&str]) {
        assert_eq!(
            self.page_errors().await,
            Vec::<String>::new(),
            "page errors"
        );
        assert_eq!(
            self.console_errors(expected).await,
            Vec::<String>::new(),
            "browser console errors"
        );
    }

    /// Errors the page itself raised (the app collects them in `window.__observeErrors`).
    async fn page_errors(&self) -> Vec<String> {
        let v = self
            .client
            .execute("return window.__observeErrors || []", vec![])
            .await
            .unwrap();
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Signs up as `name` through the form, creates the project `project` and returns its id
    /// (from the settings page's address the app goes to).
    async fn sign_up_with_project(&self, app: &TestApp, name: &str, project: &str) -> String {
        self.client
            .goto(&format!("{}/#/signup", app.address))
            .await
            .unwrap();
        self.fill("input[name=name]", name).await;
        self.fill(
            "input[name=email]",
            &format!("{}@example.com", name.to_lowercase()),
        )
        .await;
        self.fill("input[name=password]", "a long enough password")
            .await;
        self.click("form button[type=submit]").await;
        self.wait_for_text("No project yet").await;
        self.fill("input[name=name]", project).await;
        self.click("form button[type=submit]").await;
        self.wait_for_text("No key yet").await;
        let url = self.client.current_url().await.unwrap();
        url.fragment()
            .and_then(|f| f.split('/').nth(2))
            .unwrap()
            .to_string()
    }

    /// Presses `key` (a WebDriver key code such as [`TAB`]) in the focused element.
    async fn press(&self, key: &str) {
        self.client
            .active_element()
            .await
            .unwrap()
            .send_keys(key)
            .await
            .unwrap();
    }

    /// Presses Tab until the focused element matches `css`, as a keyboard user would; fails
    /// when it is not reached within 40 presses, or when the focus is not visibly outlined.
    async fn tab_to(&self, css: &str) {
        for _ in 0..40 {
            self.press(TAB).await;
            let focused = self
                .client
                .execute(
                    "const e = document.activeElement;
                     return [e.matches(arguments[0]), getComputedStyle(e).outlineStyle];",
                    vec![json!(css)],
                )
                .await
                .unwrap();
            if focused[0] == true {
                assert_ne!(
                    focused[1], "none",
                    "{css} is focused without a visible outline"
                );
                return;
            }
        }
        self.screenshot("failure").await;
        panic!("Tab never reached {css} (target/screenshots/failure.png)");
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[actix_web::test]
async fn sign_up_create_a_project_and_a_key_then_sign_out() {
    let app: TestApp = spawn_app().await;
    let b = Browser::start().await;
    b.client.goto(&format!("{}/", app.address)).await.unwrap();
    b.wait_for_text("Sign in").await;
    b.screenshot("sign-in").await;

    b.click("a[href='#/signup']").await;
    b.fill("input[name=name]", "Ada").await;
    b.fill("input[name=email]", "ada@example.com").await;
    b.fill("input[name=password]", "a long enough password")
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("No project yet").await;
    b.screenshot("projects-empty").await;

    b.fill("input[name=name]", "Web shop").await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("No key yet").await;
    b.click("form button[type=submit]").await;
    let key = b.find("#new-key-value").await.text().await.unwrap();
    assert!(key.starts_with("obs_"), "{key}");
    let snippet = b.find("#new-key-snippet").await.text().await.unwrap();
    assert!(
        snippet.contains("/sdk/observe.js") && snippet.contains(&key),
        "{snippet}"
    );
    // The DSN for Sentry SDKs, with the project's numeric id, shown too.
    let dsn = b.find("#new-key-dsn").await.text().await.unwrap();
    assert!(
        dsn.starts_with("http://")
            && dsn.contains('@')
            && dsn.rsplit('/').next().unwrap().parse::<i64>().is_ok(),
        "{dsn}"
    );
    b.screenshot("project-keys").await;

    // What the browser made is what the API has.
    let token = b
        .client
        .execute(
            "return fetch('/auth/refresh', {method: 'POST'}).then(r => r.json()).then(j => j.access_token)",
            vec![],
        )
        .await
        .unwrap();
    let token = token.as_str().unwrap().to_string();
    let projects = call(
        &app,
        awc::http::Method::GET,
        "/projects",
        Some(&token),
        None,
    )
    .await
    .json();
    assert_eq!(projects["items"][0]["name"], "Web shop");

    // An access token that expires meanwhile is renewed without the user noticing: the API's
    // next answer is a 401 (made here, as waiting out a real token takes its whole minute),
    // and the page shows the projects all the same, through the refresh cookie.
    b.client
        .execute(
            "const real = window.fetch; window.__expired = 0;
             window.fetch = (url, opts) => {
               if (window.__expired === 0 && String(url).startsWith('/projects')) {
                 window.__expired = 1;
                 return Promise.resolve(new Response(JSON.stringify({error: {code: 'unauthorized', message: 'token expired'}}), {status: 401}));
               }
               return real(url, opts);
             };
             location.hash = '#/projects';",
            vec![],
        )
        .await
        .unwrap();
    b.wait_for_text("New project").await;
    let expired = b
        .client
        .execute("return window.__expired", vec![])
        .await
        .unwrap();
    assert_eq!(expired, json!(1), "the 401 was served and got past");
    assert!(
        b.client
            .find(Locator::Css("input[name=password]"))
            .await
            .is_err(),
        "not sent to sign in"
    );

    // Deleting the project from its settings.
    let project = projects["items"][0]["id"].as_str().unwrap().to_string();
    b.client
        .goto(&format!("{}/#/projects/{project}/settings", app.address))
        .await
        .unwrap();
    b.wait_for_text("Delete project").await;
    b.fill("input[name=confirm]", "Web shop").await;
    b.click("section:last-of-type form button[type=submit]")
        .await;
    b.wait_for_text("No project yet").await;
    let gone = call(
        &app,
        awc::http::Method::GET,
        &format!("/projects/{project}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(gone.status, 404);

    // The account page changes the password.
    b.click("a[href='#/account']").await;
    b.fill("input[name=current_password]", "a long enough password")
        .await;
    b.fill("input[name=new_password]", "an even longer password")
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Password changed").await;
    b.screenshot("account").await;

    // A reload keeps the session (the refresh cookie), and signing out ends it.
    b.client.refresh().await.unwrap();
    b.wait_for_text("ada@example.com").await;
    b.click("#nav button").await;
    b.wait_for_text("Sign in").await;
    b.client.refresh().await.unwrap();
    b.wait_for_text("Sign in").await;
    assert!(
        b.client
            .find(Locator::Css("input[name=password]"))
            .await
            .is_ok(),
        "back on the sign-in page after a reload"
    );
    b.assert_no_errors(&[]).await;
    b.close().await;
}

/// A website of the test's own (another origin than observe) whose page loads the snippet,
/// navigates like a single-page app, tracks an event and throws.
async fn test_site(observe: &str, key: &str) -> (String, actix_web::dev::ServerHandle) {
    let page = format!(
        r#"<!doctype html><html><head><title>shop</title></head><body><h1>shop</h1>
<script src="{observe}/sdk/observe.js" data-key="{key}"></script>
<script>
  history.pushState({{}}, "", "/checkout");
  observe.track("added_to_cart", {{ sku: "A1" }});
  setTimeout(function () {{ throw new TypeError("boom at checkout"); }}, 50);
</script></body></html>"#
    );
    let server = actix_web::HttpServer::new(move || {
        let page = page.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            let page = page.clone();
            async move {
                actix_web::HttpResponse::Ok()
                    .content_type("text/html; charset=utf-8")
                    .body(page)
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}

/// Loads `hash` of the dashboard again until its text holds `text` (data arrives in batches).
async fn until_shown(b: &Browser, app: &TestApp, hash: &str, text: &str) {
    for _ in 0..40 {
        b.client
            .goto(&format!("{}/{hash}", app.address))
            .await
            .unwrap();
        b.client.refresh().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let body = b
            .client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains(text) {
            return;
        }
    }
    panic!("{hash} never showed {text:?}");
}

#[actix_web::test]
async fn the_snippet_on_a_website_reaches_the_analytics_and_errors_pages() {
    let app: TestApp = spawn_app().await;
    let b = Browser::start().await;
    let project = b.sign_up_with_project(&app, "Grace", "Shop").await;
    // An empty project says how to send its first event.
    b.client
        .goto(&format!("{}/#/projects/{project}/analytics", app.address))
        .await
        .unwrap();
    b.wait_for_text("No events yet").await;
    b.screenshot("analytics-empty").await;
    b.client
        .goto(&format!("{}/#/projects/{project}/settings", app.address))
        .await
        .unwrap();
    b.click("form button[type=submit]").await;
    let key = b.find("#new-key-value").await.text().await.unwrap();

    let (site, site_server) = test_site(&app.address, &key).await;
    b.client.goto(&format!("{site}/")).await.unwrap();
    b.wait_for_text("shop").await;
    // Leaving the page sends what is queued (keepalive); the batch timer would too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.client.goto("about:blank").await.unwrap();

    until_shown(
        &b,
        &app,
        &format!("#/projects/{project}/analytics"),
        "added_to_cart",
    )
    .await;
    let body = b.find("body").await.text().await.unwrap();
    assert!(
        body.contains("/checkout"),
        "the SPA navigation's page view: {body}"
    );
    assert!(body.contains("$pageview"), "{body}");
    b.screenshot("analytics").await;
    // The event explorer's filter: only the custom event.
    b.fill("#event-filters input[name=name]", "added_to_cart")
        .await;
    b.click("#event-filters button").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latest = b.find("#latest-events").await.text().await.unwrap();
    assert!(
        latest.contains("added_to_cart") && !latest.contains("$pageview"),
        "{latest}"
    );
    until_shown(
        &b,
        &app,
        &format!("#/projects/{project}/errors"),
        "boom at checkout",
    )
    .await;
    b.screenshot("errors").await;
    // Sorted by frequency, the group is still listed and the choice is kept.
    b.find("#error-sort")
        .await
        .select_by_value("count")
        .await
        .unwrap();
    b.wait_for_text("boom at checkout").await;
    let sort = b
        .client
        .execute("return document.querySelector('#error-sort').value", vec![])
        .await
        .unwrap();
    assert_eq!(sort, json!("count"));
    b.click("#error-groups a").await;
    b.wait_for_text("Latest stack trace").await;
    // Who was affected: the occurrence names the visitor and the page.
    let occurrences = b.find("#occurrences").await.text().await.unwrap();
    assert!(occurrences.contains("/checkout"), "{occurrences}");
    b.screenshot("error-detail").await;
    // The test site threw on purpose.
    b.assert_no_errors(&["boom at checkout"]).await;
    b.close().await;
    site_server.stop(false).await;
}

#[actix_web::test]
async fn a_monitor_made_in_the_ui_shows_its_status_and_pausing_it_pauses_it_in_the_api() {
    let app: TestApp = crate::helpers::spawn_app_with(
        |s| {
            s.monitors.allow_private_targets = true;
            // 5-minute checks every second.
            s.monitors.interval_divisor = 300;
        },
        None,
    )
    .await;
    let (target, target_server) = test_site("http://127.0.0.1:9", "obs_unused").await;
    let b = Browser::start().await;
    let project = b.sign_up_with_project(&app, "Linus", "Infra").await;

    b.client
        .goto(&format!("{}/#/projects/{project}/monitors", app.address))
        .await
        .unwrap();
    b.wait_for_text("No monitor yet").await;
    b.fill("input[name=name]", "shop home").await;
    b.fill("input[name=url]", &format!("{target}/")).await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("shop home").await;
    until_shown(&b, &app, &format!("#/projects/{project}/monitors"), "up").await;
    b.screenshot("monitors").await;

    b.click("[data-monitor] button.pause").await;
    b.wait_for_text("Resume").await;
    let token = b
        .client
        .execute(
            "return fetch('/auth/refresh', {method: 'POST'}).then(r => r.json()).then(j => j.access_token)",
            vec![],
        )
        .await
        .unwrap();
    let monitors = call(
        &app,
        awc::http::Method::GET,
        &format!("/projects/{project}/monitors"),
        Some(token.as_str().unwrap()),
        None,
    )
    .await
    .json();
    assert_eq!(monitors["items"][0]["paused"], true, "{monitors}");
    // The list's 24-hour bar: 24 hours, holding the checks made meanwhile once the
    // CheckWriter has written them (it writes in batches).
    let mut listed = monitors.clone();
    for _ in 0..50 {
        let hours = listed["items"][0]["last_24h"].as_array().unwrap();
        assert_eq!(hours.len(), 24);
        if hours.iter().any(|h| h["checks"].as_i64().unwrap() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        listed = call(
            &app,
            awc::http::Method::GET,
            &format!("/projects/{project}/monitors"),
            Some(token.as_str().unwrap()),
            None,
        )
        .await
        .json();
    }
    let hours = listed["items"][0]["last_24h"].as_array().unwrap();
    let made: i64 = hours.iter().map(|h| h["checks"].as_i64().unwrap()).sum();
    assert!(made >= 1, "{listed}");
    assert_eq!(
        hours.iter().map(|h| h["ok"].as_i64().unwrap()).sum::<i64>(),
        made,
        "every check was up"
    );
    assert_eq!(monitors["items"][0]["status"], "paused");

    b.click("[data-monitor] a").await;
    b.wait_for_text("Uptime 24 h").await;
    b.screenshot("monitor-detail").await;
    // Editing it: the new name is the API's.
    let name = b.find("input[name=name]").await;
    name.clear().await.unwrap();
    name.send_keys("shop front page").await.unwrap();
    b.click("form button[type=submit]").await;
    b.wait_for_text("shop front page").await;
    let detail = call(
        &app,
        awc::http::Method::GET,
        &format!("/projects/{project}/monitors"),
        Some(token.as_str().unwrap()),
        None,
    )
    .await
    .json();
    assert_eq!(detail["items"][0]["name"], "shop front page", "{detail}");
    b.assert_no_errors(&[]).await;
    b.close().await;
    target_server.stop(false).await;
}

#[actix_web::test]
async fn api_monitoring_metrics_and_billing_pages_show_their_data() {
    let app: TestApp = spawn_app().await;
    let sdk = crate::helpers::sdk(&app).await;
    let calls = json!([
        {"method": "GET", "route": "/checkout", "status_code": 200, "duration_ms": 12},
        {"method": "GET", "route": "/checkout", "status_code": 500, "duration_ms": 480},
        {"method": "POST", "route": "/cart", "status_code": 201, "duration_ms": 30},
    ]);
    assert_eq!(
        crate::helpers::ingest(&app, &sdk.key, "requests", calls)
            .await
            .status,
        202
    );
    let points = json!([
        {"name": "queue.depth", "value": 4, "type": "gauge"},
        {"name": "llm.usage", "value": 1, "type": "counter",
         "labels": {"model": "gpt-4o", "input_tokens": "1000", "output_tokens": "200"}},
    ]);
    let reply = crate::helpers::ingest(&app, &sdk.key, "metrics", points).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/#/signin", app.address))
        .await
        .unwrap();
    b.fill("input[name=email]", &sdk.account.email).await;
    b.fill("input[name=password]", crate::helpers::TEST_PASSWORD)
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Projects").await;
    let project = &sdk.project;

    b.client
        .goto(&format!("{}/#/projects/{project}/api", app.address))
        .await
        .unwrap();
    b.wait_for_text("GET /checkout").await;
    b.wait_for_text("50.0%").await;
    b.fill("#request-filters input[name=status]", "5xx").await;
    b.click("#request-filters button").await;
    b.wait_for_text("Request log").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = b.find("#request-log").await.text().await.unwrap();
    assert!(log.contains("500") && !log.contains("201"), "{log}");
    b.screenshot("api-monitoring").await;

    b.client
        .goto(&format!("{}/#/projects/{project}/metrics", app.address))
        .await
        .unwrap();
    b.fill("#metric-picker input[name=name]", "queue.depth")
        .await;
    b.click("#metric-picker button").await;
    b.wait_for_text("Export CSV").await;
    b.screenshot("metrics").await;

    b.client
        .goto(&format!("{}/#/billing", app.address))
        .await
        .unwrap();
    b.wait_for_text("Billing is not configured").await;
    b.screenshot("billing").await;
    b.assert_no_errors(&[]).await;
    b.close().await;
}

#[actix_web::test]
async fn the_api_docs_render_from_the_binary_and_ask_no_other_site() {
    let app: TestApp = spawn_app().await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/docs", app.address))
        .await
        .unwrap();
    b.wait_for_text("/ingest/events").await;
    b.screenshot("docs").await;
    let resources = b
        .client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let resources: Vec<String> = serde_json::from_value(resources).unwrap();
    assert!(
        resources.iter().any(|r| r.ends_with("/assets/scalar.js")),
        "{resources:?}"
    );
    for r in &resources {
        assert!(
            r.starts_with(&app.address) || r.starts_with("data:") || r.starts_with("blob:"),
            "the docs fetched {r} from another site"
        );
    }
    b.assert_no_errors(&[]).await;
    b.close().await;
}

#[actix_web::test]
async fn a_forgotten_password_is_reset_through_the_emailed_link_to_the_dashboard() {
    use crate::mailer::{api_key, towards, FakeResend};
    let fake = FakeResend::start(&[], 200).await;
    let app: TestApp = crate::helpers::spawn_app_with(towards(&fake, &api_key()), None).await;
    let account = crate::helpers::register(&app).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/#/signin", app.address))
        .await
        .unwrap();
    b.click("a[href='#/forgot-password']").await;
    b.fill("input[name=email]", &account.email).await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("on its way").await;
    let mut link = None;
    for _ in 0..100 {
        link = fake.received().iter().rev().find_map(|r| {
            let text = r.body["text"].as_str()?;
            let start = text.find("http")?;
            let end = text[start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |e| start + e);
            Some(text[start..end].to_string())
        });
        if link.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let link = link.expect("a reset email");
    assert!(
        link.starts_with(&format!("{}/#/reset-password?token=", app.address)),
        "{link}"
    );
    b.client.goto(&link).await.unwrap();
    b.fill("input[name=new_password]", "a brand new password")
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Your password is changed").await;
    b.fill("input[name=email]", &account.email).await;
    b.fill("input[name=password]", "a brand new password").await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Projects").await;
    b.wait_for_text(&account.email).await;
    b.assert_no_errors(&[]).await;
    b.close().await;
}

#[actix_web::test]
async fn an_upgrade_goes_to_squads_checkout_and_the_paid_plan_shows() {
    use crate::support::squad::FakeSquad;
    let squad = FakeSquad::start().await;
    let app: TestApp = crate::helpers::spawn_app_with(crate::billing::towards(&squad), None).await;
    let (_, features) = app.get_json("/features").await;
    assert_eq!(features["billing"], true, "{features}");
    let account = crate::helpers::register(&app).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/#/signin", app.address))
        .await
        .unwrap();
    b.fill("input[name=email]", &account.email).await;
    b.fill("input[name=password]", crate::helpers::TEST_PASSWORD)
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Projects").await;
    b.client
        .goto(&format!("{}/#/billing", app.address))
        .await
        .unwrap();
    b.wait_for_text("Plan: hobby").await;
    b.screenshot("billing-hobby").await;
    b.click("section button").await;
    // The browser is sent to Squad's checkout page for the payment just recorded.
    let mut checkout = None;
    for _ in 0..50 {
        let url = b.client.current_url().await.unwrap();
        if url.as_str().starts_with("https://sandbox-pay.squadco.com/") {
            checkout = Some(url);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let checkout = checkout.expect("sent to Squad's checkout");
    let reference = checkout.path().trim_start_matches('/').to_string();
    squad.pay(&reference, "tok_dashboard");
    let reply = crate::billing::deliver_webhook(&app, &squad, &reference).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    b.client
        .goto(&format!("{}/#/billing", app.address))
        .await
        .unwrap();
    b.wait_for_text("Plan: pro").await;
    b.wait_for_text("payment succeeded").await;
    b.screenshot("billing-pro").await;
    b.assert_no_errors(&[]).await;
    b.close().await;
}

#[actix_web::test]
async fn pages_fit_a_phone_and_follow_a_dark_system_theme() {
    let app: TestApp = spawn_app().await;
    let sdk = crate::helpers::sdk(&app).await;
    let b = Browser::start_with(&[
        "--window-size=390,844",
        "--blink-settings=preferredColorScheme=0",
    ])
    .await;
    b.client
        .goto(&format!("{}/#/signin", app.address))
        .await
        .unwrap();
    b.fill("input[name=email]", &sdk.account.email).await;
    b.fill("input[name=password]", crate::helpers::TEST_PASSWORD)
        .await;
    b.click("form button[type=submit]").await;
    b.wait_for_text("Projects").await;
    for page in [
        "analytics",
        "errors",
        "api",
        "metrics",
        "monitors",
        "settings",
    ] {
        b.client
            .goto(&format!(
                "{}/#/projects/{}/{page}",
                app.address, sdk.project
            ))
            .await
            .unwrap();
        b.find("nav.tabs").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fit = b
            .client
            .execute(
                "return [matchMedia('(prefers-color-scheme: dark)').matches,
                         getComputedStyle(document.body).backgroundColor,
                         document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fit[0], json!(true), "{page}: the dark scheme is asked for");
        assert_eq!(fit[1], json!("rgb(18, 18, 20)"), "{page}: dark background");
        let wide = b
            .client
            .execute(
                "return [...document.querySelectorAll('body *')]
                   .filter(e => e.getBoundingClientRect().right > 391)
                   .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fit[3],
            json!(390),
            "{page}: a phone's width; too wide: {wide}"
        );
        assert!(
            fit[2].as_i64().unwrap() <= fit[3].as_i64().unwrap(),
            "{page} is wider than the phone: {fit}"
        );
        b.screenshot(&format!("phone-dark-{page}")).await;
    }
    b.assert_no_errors(&[]).await;
    b.close().await;
}

#[actix_web::test]
async fn the_shell_and_its_files_come_from_the_binary_with_a_strict_policy() {
    let app = spawn_app().await;
    let reply = crate::helpers::send(app.req(awc::http::Method::GET, "/"), None).await;
    assert_eq!(reply.status, 200);
    let csp = reply
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(reply.text.contains("/assets/app.js"));
    // Nothing optional is configured here: the dashboard is told so and offers neither.
    let (status, features) = app.get_json("/features").await;
    assert_eq!(status, 200);
    assert_eq!(features, json!({"github_sign_in": false, "billing": false}));
    for (path, kind) in [
        ("/assets/app.js", "javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let r = crate::helpers::send(app.req(awc::http::Method::GET, path), None).await;
        assert_eq!(r.status, 200, "{path}");
        let ct = r.headers.get("content-type").unwrap().to_str().unwrap();
        assert!(ct.contains(kind), "{path}: {ct}");
        let etag = r.headers.get("etag").unwrap().to_str().unwrap().to_string();
        let again = crate::helpers::send(
            app.req(awc::http::Method::GET, path)
                .insert_header(("If-None-Match", etag.as_str())),
            None,
        )
        .await;
        assert_eq!(again.status, 304, "{path}");
    }
    let missing =
        crate::helpers::send(app.req(awc::http::Method::GET, "/assets/nope.js"), None).await;
    assert_eq!(missing.status, 404);
}

#[actix_web::test]
async fn the_dashboard_is_used_with_the_keyboard_alone() {
    let app: TestApp = spawn_app().await;
    let account = crate::helpers::register(&app).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/#/signin", app.address))
        .await
        .unwrap();
    b.wait_for_text("Forgot your password?").await;

    // Sign in: Tab to each field, type, Enter submits. A wrong password first: the form
    // shows the API's own message.
    b.tab_to("input[name=email]").await;
    b.press(&account.email).await;
    b.tab_to("input[name=password]").await;
    b.press("not the password").await;
    b.press(ENTER).await;
    b.wait_for_text("email or password is incorrect").await;
    let shown = b
        .find("form .error[role=alert]")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(shown, "email or password is incorrect");
    b.tab_to("input[name=password]").await;
    b.client
        .execute("document.activeElement.value = ''", vec![])
        .await
        .unwrap();
    b.press(crate::helpers::TEST_PASSWORD).await;
    b.press(ENTER).await;
    b.wait_for_text("No project yet").await;

    // A slow API: the page says it is loading until the answer comes.
    b.client
        .execute(
            "const real = window.fetch;
             window.fetch = (url, opts) => String(url).startsWith('/projects?')
               ? new Promise((done) => setTimeout(() => done(real(url, opts)), 1500))
               : real(url, opts);
             location.hash = '#/account'; setTimeout(() => { location.hash = '#/projects'; }, 50);",
            vec![],
        )
        .await
        .unwrap();
    b.wait_for_text("Loading projects").await;
    b.wait_for_text("No project yet").await;

    // A project, then a key from its settings, by Tab and Enter.
    b.tab_to("input[name=name]").await;
    b.press("Keyboard shop").await;
    b.press(ENTER).await;
    b.wait_for_text("No key yet").await;
    b.tab_to("form button[type=submit]").await;
    b.press(ENTER).await;
    b.find("#new-key-value").await;
    b.tab_to("#new-key button").await;

    // The project's tabs are links: Analytics opens with the first-event help.
    b.tab_to("nav.tabs a[href$='/analytics']").await;
    b.press(ENTER).await;
    b.wait_for_text("No events yet").await;
    // The range picker: a custom range of whole days is chosen and applied from the keyboard.
    b.tab_to("select[name=from]").await;
    // Typing a letter picks the first option that starts with it: "Custom days…".
    b.press("C").await;
    b.tab_to("#range-apply").await;
    b.press(ENTER).await;
    b.wait_for_text("No events yet").await;
    let custom = b
        .client
        .execute(
            "return document.querySelector('select[name=from]').value",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(custom, json!("custom"), "the page kept the custom range");

    // Signing out from the keyboard returns to sign-in.
    b.tab_to("#nav button").await;
    b.press(ENTER).await;
    b.wait_for_text("Forgot your password?").await;
    // The wrong password's answer is in the console as a failed load, by design.
    b.assert_no_errors(&[
        "/auth/login - Failed to load resource: the server responded with a status of 401",
    ])
    .await;
    b.close().await;
}

#[actix_web::test]
async fn an_error_from_a_sentry_sdk_shows_its_breadcrumbs_and_context() {
    let app: TestApp = spawn_app().await;
    let b = Browser::start().await;
    let project = b.sign_up_with_project(&app, "Linus", "Backend").await;
    b.click("form button[type=submit]").await;
    let dsn = b.find("#new-key-dsn").await.text().await.unwrap();
    let body = crate::sentry::envelope("python_chained.envelope", &dsn);
    let reply = crate::sentry::post_envelope(&app, &dsn, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    b.client
        .goto(&format!("{}/#/projects/{project}/errors", app.address))
        .await
        .unwrap();
    b.wait_for_text("KeyError").await;
    b.click("#error-groups a").await;
    b.wait_for_text("Context of the latest occurrence").await;
    let context = b.find("#occurrence-context").await.text().await.unwrap();
    assert!(context.contains("creating order for sku-42"), "{context}");
    b.screenshot("error-detail-sentry").await;
    b.assert_no_errors(&[]).await;
    b.close().await;
}
