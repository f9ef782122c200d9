//! The monitor engine end to end, against a local target server that fails on command: the
//! streak (a failed check is retried once; 2 failures open nothing, 3 open one incident, the
//! first success closes it), alert emails at a fake Resend for Pro and none for Hobby, the
//! failure kinds, pause / update / delete reaching the actor at once, a restart in the middle of
//! an incident, the SSRF guard, and two real observe processes sharing the shards (one dies,
//! the other takes its monitors).
//!
//! Monitors are created with SQL and announced with `MonitorControl::changed`, as the routes do
//! after their commit. Intervals are divided by 200 (`monitors.interval_divisor`): 60 s runs
//! every 300 ms.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use observe_core::config::Settings;
use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::{
    call, create_project, env_var, eventually, free_port, fresh_database, register, set_tier,
    spawn_app_with, test_settings, TestApp,
};
use crate::mailer::{api_key, towards, FakeResend};

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 with the keyword in the body.
    Up,
    /// 500.
    Fail,
    /// 200 without the keyword.
    NoKeyword,
    /// Answers after this many milliseconds.
    Slow(u64),
}

struct TargetState {
    mode: Mode,
    /// The next requests answered 500 regardless of the mode.
    fail_next: u32,
    hits: u64,
    /// Requests being answered now, and the most there were at once.
    in_flight: u32,
    max_in_flight: u32,
}

/// A local HTTP server that monitors check.
struct Target {
    port: u16,
    state: Arc<Mutex<TargetState>>,
}

impl Target {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(TargetState {
            mode: Mode::Up,
            fail_next: 0,
            hits: 0,
            in_flight: 0,
            max_in_flight: 0,
        }));
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind the target");
        let port = server.addrs()[0].port();
        actix_web::rt::spawn(server.run());
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    fn set(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn fail_next(&self, n: u32) {
        self.state.lock().unwrap().fail_next = n;
    }

    fn pending_failures(&self) -> u32 {
        self.state.lock().unwrap().fail_next
    }

    fn hits(&self) -> u64 {
        self.state.lock().unwrap().hits
    }

    fn max_in_flight(&self) -> u32 {
        self.state.lock().unwrap().max_in_flight
    }
}

async fn answer(state: web::Data<Mutex<TargetState>>) -> HttpResponse {
    let mode = {
        let mut s = state.lock().unwrap();
        s.hits += 1;
        if s.fail_next > 0 {
            s.fail_next -= 1;
            Mode::Fail
        } else {
            s.mode
        }
    };
    match mode {
        Mode::Up => HttpResponse::Ok().body("status: all systems operational"),
        Mode::Fail => HttpResponse::InternalServerError().body("boom"),
        Mode::NoKeyword => HttpResponse::Ok().body("maintenance"),
        Mode::Slow(ms) => {
            {
                let mut s = state.lock().unwrap();
                s.in_flight += 1;
                s.max_in_flight = s.max_in_flight.max(s.in_flight);
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            state.lock().unwrap().in_flight -= 1;
            HttpResponse::Ok().body("status: all systems operational (slowly)")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fast(s: &mut Settings) {
    s.monitors.allow_private_targets = true;
    s.monitors.interval_divisor = 200;
    s.monitors.retry_delay_ms = 20;
    s.monitors.write_interval_ms = 50;
    s.monitors.sync_interval_secs = 1;
}

struct NewMonitor<'a> {
    url: &'a str,
    interval: i32,
    timeout: i32,
    keyword: Option<&'a str>,
}

impl<'a> NewMonitor<'a> {
    fn at(url: &'a str) -> Self {
        Self {
            url,
            interval: 60,
            timeout: 5,
            keyword: None,
        }
    }
}

async fn insert_monitor(db: &deadpool_like::Db<'_>, project: Uuid, m: NewMonitor<'_>) -> Uuid {
    db.one(
        "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds, keyword) \
         VALUES ($1, 'api health', $2, $3, $4, $5) RETURNING id",
        &[&project, &m.url, &m.interval, &m.timeout, &m.keyword],
    )
    .await
    .get(0)
}

/// A thin wrapper over a pooled connection or a plain client, for the queries tests make.
mod deadpool_like {
    use tokio_postgres::types::ToSql;
    use tokio_postgres::Row;

    pub enum Db<'a> {
        Pool(&'a observe_core::db::PgPool),
        Client(&'a tokio_postgres::Client),
    }

    impl Db<'_> {
        pub async fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Row {
            match self {
                Db::Pool(pool) => pool
                    .get()
                    .await
                    .unwrap()
                    .query_one(sql, params)
                    .await
                    .unwrap(),
                Db::Client(c) => c.query_one(sql, params).await.unwrap(),
            }
        }

        pub async fn all(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Row> {
            match self {
                Db::Pool(pool) => pool.get().await.unwrap().query(sql, params).await.unwrap(),
                Db::Client(c) => c.query(sql, params).await.unwrap(),
            }
        }

        pub async fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
            match self {
                Db::Pool(pool) => pool
                    .get()
                    .await
                    .unwrap()
                    .execute(sql, params)
                    .await
                    .unwrap(),
                Db::Client(c) => c.execute(sql, params).await.unwrap(),
            }
        }

        pub async fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
            self.one(sql, params).await.get(0)
        }
    }
}

use deadpool_like::Db;

fn db(app: &TestApp) -> Db<'_> {
    Db::Pool(&app.state.db)
}

/// A registered account's project on `tier`.
async fn project_on(app: &TestApp, tier: &str) -> (Uuid, String) {
    let account = register(app).await;
    let project = create_project(app, &account.token, "monitored").await;
    set_tier(app, &project, tier).await;
    (project.parse().unwrap(), account.email)
}

async fn checks(db: &Db<'_>, monitor: Uuid) -> i64 {
    db.count(
        "SELECT count(*) FROM monitor_checks WHERE monitor_id = $1",
        &[&monitor],
    )
    .await
}

async fn failed_checks(db: &Db<'_>, monitor: Uuid) -> i64 {
    db.count(
        "SELECT count(*) FROM monitor_checks WHERE monitor_id = $1 AND NOT ok",
        &[&monitor],
    )
    .await
}

async fn incidents(db: &Db<'_>, monitor: Uuid) -> (i64, i64) {
    let row = db
        .one(
            "SELECT count(*), count(*) FILTER (WHERE resolved_at IS NULL) FROM incidents \
             WHERE monitor_id = $1",
            &[&monitor],
        )
        .await;
    (row.get(0), row.get(1))
}

/// The `ok` of the checks of `monitor`, oldest first.
async fn results(db: &Db<'_>, monitor: Uuid) -> Vec<bool> {
    db.all(
        "SELECT ok FROM monitor_checks WHERE monitor_id = $1 ORDER BY started_at",
        &[&monitor],
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits until `monitor` has a successful check after every failure the target still owes,
/// so the streak is settled.
async fn settle(db: &Db<'_>, target: &Target, monitor: Uuid) {
    assert!(
        eventually(20, || async { target.pending_failures() == 0 }).await,
        "the target's failures were not all requested"
    );
    let before = checks(db, monitor).await;
    assert!(
        eventually(20, || async {
            let r = results(db, monitor).await;
            r.len() as i64 > before && r.last() == Some(&true)
        })
        .await,
        "no successful check after the failures"
    );
}

/// The longest run of consecutive failed checks.
fn longest_failure_run(results: &[bool]) -> usize {
    let (mut best, mut run) = (0, 0);
    for ok in results {
        run = if *ok { 0 } else { run + 1 };
        best = best.max(run);
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Streak, incidents, alerts
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn three_failures_open_one_incident_the_first_success_closes_it_with_one_email_each() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let configure = towards(&fake, &key);
    let app = spawn_app_with(
        move |s| {
            configure(s);
            fast(s);
        },
        None,
    )
    .await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, owner) = project_on(&app, "pro").await;
    let url = target.url();
    let monitor = insert_monitor(&db, project, NewMonitor::at(&url)).await;
    app.state.monitors.changed(monitor);

    assert!(
        eventually(20, || async { checks(&db, monitor).await >= 2 }).await,
        "the monitor is checked"
    );
    assert_eq!(failed_checks(&db, monitor).await, 0);

    // One failed request: the quick retry passes, so nothing counts.
    target.fail_next(1);
    settle(&db, &target, monitor).await;
    assert_eq!(
        failed_checks(&db, monitor).await,
        0,
        "a retried success is a success"
    );

    // Two failed checks (each = a request and its retry): no incident.
    target.fail_next(4);
    settle(&db, &target, monitor).await;
    let r = results(&db, monitor).await;
    assert_eq!(longest_failure_run(&r), 2, "{r:?}");
    assert_eq!(incidents(&db, monitor).await, (0, 0));
    let failure = db
        .one(
            "SELECT failure, status_code, error FROM monitor_checks \
             WHERE monitor_id = $1 AND NOT ok LIMIT 1",
            &[&monitor],
        )
        .await;
    assert_eq!(
        failure.get::<_, Option<String>>(0).as_deref(),
        Some("status")
    );
    assert_eq!(failure.get::<_, Option<i32>>(1), Some(500));

    // Three: one incident, and (Pro) one email.
    target.fail_next(6);
    assert!(
        eventually(20, || async { incidents(&db, monitor).await == (1, 1) }).await,
        "three failures open an incident"
    );
    let row = db
        .one(
            "SELECT status, failure_streak FROM monitors WHERE id = $1",
            &[&monitor],
        )
        .await;
    assert_eq!(row.get::<_, String>(0), "down");
    assert!(row.get::<_, i32>(1) >= 3);
    settle(&db, &target, monitor).await;
    assert!(
        eventually(20, || async { incidents(&db, monitor).await == (1, 0) }).await,
        "the first success closes the incident"
    );
    let r = results(&db, monitor).await;
    assert_eq!(longest_failure_run(&r), 3, "{r:?}");

    assert!(
        eventually(20, || async { fake.received().len() >= 2 }).await,
        "a down and a recovery email reach Resend"
    );
    // Nothing more comes (one email per event, no duplicate).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = fake.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let subjects: Vec<String> = received
        .iter()
        .map(|r| r.body["subject"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(subjects[0].contains("is down"), "{subjects:?}");
    assert!(subjects[1].contains("is up again"), "{subjects:?}");
    for r in &received {
        assert_eq!(r.body["to"][0], owner.as_str());
    }
    let incident = db
        .one(
            "SELECT down_alert_id, recovery_alert_id, cause FROM incidents WHERE monitor_id = $1",
            &[&monitor],
        )
        .await;
    assert!(incident.get::<_, Option<Uuid>>(0).is_some());
    assert!(incident.get::<_, Option<Uuid>>(1).is_some());
    assert_eq!(incident.get::<_, String>(2), "status");
    let status: String = db
        .one("SELECT status FROM monitors WHERE id = $1", &[&monitor])
        .await
        .get(0);
    assert_eq!(status, "up");

    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("observe_monitor_checks_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("observe_monitor_checks_total{result=\"status\"}"));
    assert!(metrics.contains("observe_monitor_check_lateness_seconds_bucket"));
    assert!(metrics.contains("observe_monitor_check_duration_seconds_bucket"));
    assert!(metrics.contains("observe_monitors_running 1"), "{metrics}");
    assert!(metrics.contains("observe_monitor_open_incidents 0"));
    assert!(
        metrics.contains("observe_monitor_shards_owned 64"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn hobby_organisations_get_incidents_but_no_email() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let configure = towards(&fake, &key);
    let app = spawn_app_with(
        move |s| {
            configure(s);
            fast(s);
        },
        None,
    )
    .await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "hobby").await;
    let url = target.url();
    let monitor = insert_monitor(&db, project, NewMonitor::at(&url)).await;
    app.state.monitors.changed(monitor);
    assert!(eventually(20, || async { checks(&db, monitor).await >= 1 }).await);

    target.fail_next(6);
    assert!(
        eventually(20, || async { incidents(&db, monitor).await == (1, 1) }).await,
        "the incident opens for hobby too"
    );
    settle(&db, &target, monitor).await;
    assert!(eventually(20, || async { incidents(&db, monitor).await == (1, 0) }).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fake.received().is_empty(), "hobby gets no email");
    let row = db
        .one(
            "SELECT down_alert_id, recovery_alert_id FROM incidents WHERE monitor_id = $1",
            &[&monitor],
        )
        .await;
    assert_eq!(row.get::<_, Option<Uuid>>(0), None);
    assert_eq!(row.get::<_, Option<Uuid>>(1), None);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM email_outbox WHERE kind LIKE 'monitor_%'",
            &[]
        )
        .await,
        0
    );
}

#[actix_web::test]
async fn failures_are_classified_keyword_timeout_connect_tls_and_dns() {
    let app = spawn_app_with(fast, None).await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();

    let mut keyword = NewMonitor::at(&url);
    keyword.keyword = Some("operational");
    let keyword = insert_monitor(&db, project, keyword).await;
    let mut slow = NewMonitor::at(&url);
    slow.timeout = 1;
    let slow_target = Target::start().await;
    slow_target.set(Mode::Slow(1500));
    let slow_url = slow_target.url();
    slow.url = &slow_url;
    let slow = insert_monitor(&db, project, slow).await;
    let refused_url = format!("http://127.0.0.1:{}/", free_port());
    let refused = insert_monitor(&db, project, NewMonitor::at(&refused_url)).await;
    // TLS spoken to a plain HTTP server: the handshake fails.
    let tls_url = format!("https://127.0.0.1:{}/", target.port);
    let tls = insert_monitor(&db, project, NewMonitor::at(&tls_url)).await;
    // `.invalid` never resolves (RFC 6761); a generous timeout, should the resolver be slow.
    let mut unknown = NewMonitor::at("http://no-such-host.invalid/");
    unknown.timeout = 30;
    let unknown = insert_monitor(&db, project, unknown).await;
    target.set(Mode::NoKeyword);
    for id in [keyword, slow, refused, tls, unknown] {
        app.state.monitors.changed(id);
    }

    let kind = |id: Uuid| {
        let db = &db;
        async move {
            db.all(
                "SELECT failure FROM monitor_checks WHERE monitor_id = $1 AND NOT ok",
                &[&id],
            )
            .await
            .first()
            .and_then(|r| r.get::<_, Option<String>>(0))
        }
    };
    assert!(
        eventually(20, || async { kind(keyword).await.is_some() }).await,
        "the keyword monitor fails"
    );
    assert_eq!(kind(keyword).await.as_deref(), Some("keyword"));
    assert!(eventually(20, || async { kind(slow).await.is_some() }).await);
    assert_eq!(kind(slow).await.as_deref(), Some("timeout"));
    assert!(eventually(20, || async { kind(refused).await.is_some() }).await);
    assert_eq!(kind(refused).await.as_deref(), Some("connect"));
    assert!(eventually(20, || async { kind(tls).await.is_some() }).await);
    assert_eq!(kind(tls).await.as_deref(), Some("tls"));
    assert!(eventually(60, || async { kind(unknown).await.is_some() }).await);
    assert_eq!(kind(unknown).await.as_deref(), Some("dns"));

    // The keyword back: the keyword monitor succeeds again.
    target.set(Mode::Up);
    assert!(
        eventually(20, || async {
            results(&db, keyword).await.last() == Some(&true)
        })
        .await
    );
}

// ---------------------------------------------------------------------------------------------
// Leases that cannot be outlived
// ---------------------------------------------------------------------------------------------

/// The shard leases' renewal hangs (here: another session holds a lock on the table it writes;
/// in life also a stalled connection or an overloaded server). The instance must stop its
/// monitors once two thirds of the lease have passed since the last renewal *began*, whether or
/// not the hanging renewal ever returns: past that, another instance may take the shards over.
#[actix_web::test]
async fn a_renewal_that_hangs_stops_the_monitors_before_the_lease_can_run_out() {
    let app = spawn_app_with(
        |s| {
            fast(s);
            // Renewed every second; monitors must stop within 2 s of the last renewal's start.
            s.monitors.lease_secs = 3;
        },
        None,
    )
    .await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    let monitor = insert_monitor(&db, project, NewMonitor::at(&url)).await;
    app.state.monitors.changed(monitor);
    assert!(
        eventually(20, || async { checks(&db, monitor).await >= 2 }).await,
        "the monitor is checked"
    );

    // A session locks the instances table: the next renewal waits for it.
    let (mut locker, conn) = tokio_postgres::connect(&app.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE monitor_instances IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked_at = std::time::Instant::now();

    // The last renewal began before the lock: 2 s later at the latest every monitor stops; a
    // check already past its start may still land.
    tokio::time::sleep_until((locked_at + Duration::from_millis(2600)).into()).await;
    let hits = target.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        target.hits(),
        hits,
        "monitors kept running while their leases could not be renewed"
    );
    assert_eq!(app.state.monitors.owned_shards(), 0);
    assert_eq!(app.state.monitors.running(), 0);
    // Meanwhile the leases did run out in the database: running on would have outlived them.
    let lapsed: bool = db
        .one(
            "SELECT max(lease_until) < now() FROM monitor_shards WHERE owner IS NOT NULL",
            &[],
        )
        .await
        .get(0);
    assert!(lapsed, "the leases outlasted the stall");

    // The lock gone, the instance renews and runs its monitors again.
    lock.rollback().await.unwrap();
    assert!(
        eventually(20, || async { target.hits() > hits + 2 }).await,
        "the monitors run again once renewals succeed"
    );
    assert!(app.state.monitors.owned_shards() > 0);
}

/// A write from an instance that lost the shard changes nothing: here the lease is taken away
/// under the instance (as when it stalled past its lease and another instance claimed the
/// shard), and before its next renewal tells it so, its monitor keeps failing checks that would
/// grow the streak and open an incident.
#[actix_web::test]
async fn state_writes_of_an_instance_that_lost_the_shard_change_nothing() {
    let app = spawn_app_with(fast, None).await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    let monitor = insert_monitor(&db, project, NewMonitor::at(&url)).await;
    app.state.monitors.changed(monitor);
    assert!(
        eventually(20, || async {
            let r = results(&db, monitor).await;
            r.len() >= 2 && r.iter().all(|ok| *ok)
        })
        .await,
        "the monitor is checked"
    );

    // Another instance holds every shard now (this one renews only every 10 s).
    db.exec(
        "UPDATE monitor_shards SET owner = 'another-instance', \
             lease_until = now() + interval '1 hour'",
        &[],
    )
    .await;
    let state_of = || async {
        let row = db
            .one(
                "SELECT status, failure_streak, last_checked_at FROM monitors WHERE id = $1",
                &[&monitor],
            )
            .await;
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, Option<DateTime<Utc>>>(2),
        )
    };
    // A write already past its check may still land; the state after it is the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = state_of().await;
    target.set(Mode::Fail);
    tokio::time::sleep(Duration::from_millis(3000)).await;

    assert_eq!(
        state_of().await,
        before,
        "a fenced write changed the monitor"
    );
    assert_eq!(before.0, "up");
    assert_eq!(
        incidents(&db, monitor).await,
        (0, 0),
        "a fenced write opened an incident"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM email_outbox", &[]).await,
        0,
        "a fenced write enqueued an alert"
    );
    // Told so by its own write, the instance stops the monitor.
    let hits = target.hits();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        target.hits(),
        hits,
        "the monitor kept running after a fenced write"
    );
}

// ---------------------------------------------------------------------------------------------
// One tenant cannot starve the others
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn stored_timeouts_are_held_to_the_servers_cap() {
    let app = spawn_app_with(
        |s| {
            fast(s);
            s.monitors.max_timeout_secs = 1;
        },
        None,
    )
    .await;
    let db = db(&app);
    let target = Target::start().await;
    target.set(Mode::Slow(2500));
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    // Stored with 5 s (before the cap, or under a higher one): the target answers in 2.5 s.
    let mut m = NewMonitor::at(&url);
    m.timeout = 5;
    let monitor = insert_monitor(&db, project, m).await;
    app.state.monitors.changed(monitor);
    assert!(
        eventually(20, || async { !results(&db, monitor).await.is_empty() }).await,
        "the monitor is checked"
    );
    let row = db
        .one(
            "SELECT ok, failure FROM monitor_checks WHERE monitor_id = $1 \
             ORDER BY started_at LIMIT 1",
            &[&monitor],
        )
        .await;
    assert!(!row.get::<_, bool>(0), "a check past the cap fails");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("timeout"));
}

/// A tenant whose targets hang takes at most its organisation's share of the check slots;
/// its checks that wait for a slot are not charged the wait against their timeout; another
/// tenant's checks go through meanwhile.
#[actix_web::test]
async fn a_tenant_with_hanging_targets_keeps_to_its_share_of_check_slots() {
    let app = spawn_app_with(
        |s| {
            fast(s);
            s.monitors.max_concurrent_checks = 4;
            s.monitors.max_concurrent_checks_per_organisation = 2;
        },
        None,
    )
    .await;
    let db = db(&app);
    let slow = Target::start().await;
    slow.set(Mode::Slow(1000));
    let quick = Target::start().await;
    let (noisy, _) = project_on(&app, "team").await;
    let (quiet, _) = project_on(&app, "team").await;

    // Six monitors of one organisation, each check holding its slot 1 s, with a 2 s timeout:
    // with two slots the last of them waits 2 s for one, then runs 1 s.
    let slow_url = slow.url();
    let mut noisy_monitors = Vec::new();
    for _ in 0..6 {
        let mut m = NewMonitor::at(&slow_url);
        m.timeout = 2;
        let id = insert_monitor(&db, noisy, m).await;
        app.state.monitors.changed(id);
        noisy_monitors.push(id);
    }
    let quick_url = quick.url();
    let mut m = NewMonitor::at(&quick_url);
    m.timeout = 1;
    let quiet_monitor = insert_monitor(&db, quiet, m).await;
    app.state.monitors.changed(quiet_monitor);

    let noisy_checks = || async {
        db.count(
            "SELECT count(*) FROM monitor_checks WHERE monitor_id = ANY($1)",
            &[&noisy_monitors],
        )
        .await
    };
    assert!(
        eventually(30, || async { noisy_checks().await >= 12 }).await,
        "the slow monitors are checked"
    );
    assert!(
        slow.max_in_flight() <= 2,
        "one organisation had {} checks in flight at once",
        slow.max_in_flight()
    );
    let noisy_failures = db
        .count(
            "SELECT count(*) FROM monitor_checks WHERE monitor_id = ANY($1) AND NOT ok",
            &[&noisy_monitors],
        )
        .await;
    assert_eq!(
        noisy_failures, 0,
        "waiting for a slot counted against the timeout"
    );
    let quiet_results = results(&db, quiet_monitor).await;
    assert!(quiet_results.len() >= 5, "{quiet_results:?}");
    assert!(quiet_results.iter().all(|ok| *ok), "{quiet_results:?}");
}

// ---------------------------------------------------------------------------------------------
// Pause, update, delete
// ---------------------------------------------------------------------------------------------

async fn scheduled(db: &Db<'_>, monitor: Uuid, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    db.all(
        "SELECT scheduled_at FROM monitor_checks WHERE monitor_id = $1 AND scheduled_at > $2 \
         ORDER BY scheduled_at",
        &[&monitor, &after],
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn gaps_ms(at: &[DateTime<Utc>]) -> Vec<i64> {
    at.windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect()
}

#[actix_web::test]
async fn update_pause_resume_and_delete_take_effect_at_once() {
    let app = spawn_app_with(fast, None).await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    let mut m = NewMonitor::at(&url);
    m.interval = 300; // 1.5 s
    let monitor = insert_monitor(&db, project, m).await;
    app.state.monitors.changed(monitor);
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    assert!(
        eventually(20, || async {
            scheduled(&db, monitor, epoch).await.len() >= 2
        })
        .await,
        "checked every 1.5 s"
    );
    let before = scheduled(&db, monitor, epoch).await;
    for gap in gaps_ms(&before) {
        assert!((1499..=1501).contains(&gap), "{before:?}");
    }

    // Update: 60 s (300 ms) takes effect at once.
    db.exec(
        "UPDATE monitors SET interval_seconds = 60, updated_at = now() WHERE id = $1",
        &[&monitor],
    )
    .await;
    app.state.monitors.changed(monitor);
    let last = *before.last().unwrap();
    assert!(
        eventually(20, || async {
            scheduled(&db, monitor, last).await.len() >= 5
        })
        .await,
        "the new interval runs"
    );
    let after = scheduled(&db, monitor, last).await;
    // The slots after the first rescheduled one are 300 ms apart.
    for gap in gaps_ms(&after[1..]) {
        assert!((299..=301).contains(&gap), "{after:?}");
    }

    // Pause: the actor stops, no more requests.
    db.exec(
        "UPDATE monitors SET paused = true, updated_at = now() WHERE id = $1",
        &[&monitor],
    )
    .await;
    app.state.monitors.changed(monitor);
    assert!(eventually(10, || async { app.state.monitors.running() == 0 }).await);
    // A check already in flight may still land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = target.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(target.hits(), hits, "a paused monitor is not checked");

    // Resume.
    db.exec(
        "UPDATE monitors SET paused = false, updated_at = now() WHERE id = $1",
        &[&monitor],
    )
    .await;
    app.state.monitors.changed(monitor);
    assert!(
        eventually(20, || async { target.hits() >= hits + 2 }).await,
        "a resumed monitor is checked again"
    );
    assert_eq!(app.state.monitors.running(), 1);

    // Delete: the actor stops for good.
    db.exec("DELETE FROM monitors WHERE id = $1", &[&monitor])
        .await;
    app.state.monitors.changed(monitor);
    assert!(eventually(10, || async { app.state.monitors.running() == 0 }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = target.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(target.hits(), hits, "a deleted monitor is not checked");
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains("observe_monitors_running 0"), "{metrics}");
}

#[actix_web::test]
async fn monitors_created_without_a_signal_are_found_by_the_poll() {
    let app = spawn_app_with(fast, None).await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    // As if created through another instance: no `changed` here.
    let monitor = insert_monitor(&db, project, NewMonitor::at(&url)).await;
    assert!(
        eventually(20, || async { checks(&db, monitor).await >= 1 }).await,
        "the change poll starts the monitor"
    );
    // Deleted elsewhere: the reconcile at the next renewal stops it (lease 30 s / 3).
    db.exec("DELETE FROM monitors WHERE id = $1", &[&monitor])
        .await;
    assert!(
        eventually(20, || async { app.state.monitors.running() == 0 }).await,
        "the reconcile stops a deleted monitor"
    );
}

#[actix_web::test]
async fn slots_that_passed_while_no_instance_ran_a_monitor_count_as_missed() {
    let app = spawn_app_with(fast, None).await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let url = target.url();
    // Due ten minutes ago, as after an outage of every instance (60 s checks run every 0.3 s
    // here: some 2,000 slots passed).
    let monitor: Uuid = db
        .one(
            "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds, next_check_at) \
             VALUES ($1, 'api health', $2, 60, 5, now() - interval '10 minutes') RETURNING id",
            &[&project, &url],
        )
        .await
        .get(0);
    assert!(
        eventually(20, || async { checks(&db, monitor).await >= 1 }).await,
        "the overdue monitor is checked"
    );
    let (_, text) = app.get_text("/metrics").await;
    let missed = crate::helpers::metric_value(&text, "observe_monitor_checks_missed_total")
        .expect("observe_monitor_checks_missed_total");
    assert!((1_900.0..=2_100.0).contains(&missed), "{missed}");
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn a_restart_mid_incident_keeps_one_incident_and_sends_one_recovery() {
    let fake = FakeResend::start(&[], 200).await;
    let key = api_key();
    let configure = towards(&fake, &key);
    let app = spawn_app_with(
        move |s| {
            configure(s);
            fast(s);
        },
        None,
    )
    .await;
    let target = Target::start().await;
    let (project, _) = project_on(&app, "team").await;
    let url = target.url();
    let monitor = {
        let db = db(&app);
        let id = insert_monitor(&db, project, NewMonitor::at(&url)).await;
        app.state.monitors.changed(id);
        target.set(Mode::Fail);
        assert!(
            eventually(20, || async { incidents(&db, id).await == (1, 1) }).await,
            "the incident opens"
        );
        assert!(eventually(20, || async { fake.received().len() == 1 }).await);
        id
    };
    let db_url = app.db_url.clone();
    app.server.stop(true).await;
    app.stopped.await.unwrap().unwrap();
    // The drain wrote every finished check: as many rows as checks counted.
    let counted: u64 = app
        .state
        .metrics
        .render()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("observe_monitor_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let rows = checks(&Db::Pool(&app.state.db), monitor).await;
    assert!(counted >= 3);
    assert_eq!(rows, counted as i64, "rows written by the drain");

    let configure = towards(&fake, &key);
    let app2 = spawn_app_with(
        move |s| {
            configure(s);
            fast(s);
            s.database.url = secrecy::SecretString::from(db_url);
        },
        None,
    )
    .await;
    let db = db(&app2);
    let restarted = Utc::now();
    let failed_since = |at: DateTime<Utc>| {
        let db = &db;
        async move {
            db.count(
                "SELECT count(*) FROM monitor_checks WHERE monitor_id = $1 AND NOT ok \
                 AND started_at > $2",
                &[&monitor, &at],
            )
            .await
        }
    };
    assert!(
        eventually(20, || async { failed_since(restarted).await >= 3 }).await,
        "the second instance runs the monitor"
    );
    assert_eq!(incidents(&db, monitor).await, (1, 1), "still one incident");
    let streak: i32 = db
        .one(
            "SELECT failure_streak FROM monitors WHERE id = $1",
            &[&monitor],
        )
        .await
        .get(0);
    assert!(streak >= 6, "the streak resumed: {streak}");

    target.set(Mode::Up);
    assert!(
        eventually(20, || async { incidents(&db, monitor).await == (1, 0) }).await,
        "recovery closes the incident opened before the restart"
    );
    assert!(eventually(20, || async { fake.received().len() >= 2 }).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = fake.received();
    assert_eq!(received.len(), 2, "one down, one recovery: {received:?}");
    assert!(received[1].body["subject"]
        .as_str()
        .unwrap()
        .contains("up again"));
}

// ---------------------------------------------------------------------------------------------
// SSRF guard
// ---------------------------------------------------------------------------------------------

#[actix_web::test]
async fn the_ssrf_guard_refuses_loopback_by_address_and_by_name() {
    let app = spawn_app_with(
        |s| {
            fast(s);
            s.monitors.allow_private_targets = false;
        },
        None,
    )
    .await;
    let db = db(&app);
    let target = Target::start().await;
    let (project, _) = project_on(&app, "pro").await;
    let by_address = target.url();
    let by_name = format!("http://localhost:{}/health", target.port);
    let a = insert_monitor(&db, project, NewMonitor::at(&by_address)).await;
    let b = insert_monitor(&db, project, NewMonitor::at(&by_name)).await;
    app.state.monitors.changed(a);
    app.state.monitors.changed(b);
    for id in [a, b] {
        assert!(
            eventually(20, || async { failed_checks(&db, id).await >= 1 }).await,
            "a refused check is recorded"
        );
        let row = db
            .one(
                "SELECT failure, error FROM monitor_checks WHERE monitor_id = $1 AND NOT ok LIMIT 1",
                &[&id],
            )
            .await;
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("connect"));
        let error: String = row.get::<_, Option<String>>(1).unwrap();
        assert!(error.contains("is not allowed"), "{error}");
        assert!(error.contains("loopback"), "{error}");
    }
    assert_eq!(target.hits(), 0, "the target never receives a request");
}

/// The error a tenant sees for a refused check names what was refused, never the address the
/// host resolved to: that would let a tenant map observe's internal DNS through error texts.
#[actix_web::test]
async fn a_refused_check_never_names_the_address_its_host_resolved_to() {
    let app = spawn_app_with(
        |s| {
            fast(s);
            s.monitors.allow_private_targets = false;
        },
        None,
    )
    .await;
    let target = Target::start().await;
    let account = register(&app).await;
    let project = create_project(&app, &account.token, "named").await;
    set_tier(&app, &project, "pro").await;
    let reply = call(
        &app,
        awc::http::Method::POST,
        &format!("/projects/{project}/monitors"),
        Some(&account.token),
        Some(serde_json::json!({
            "name": "internal",
            "url": format!("http://localhost:{}/health", target.port),
            "interval_seconds": 60,
        })),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let detail = format!(
        "/projects/{project}/monitors/{}",
        reply.json()["id"].as_str().unwrap()
    );
    let checked = || async {
        call(
            &app,
            awc::http::Method::GET,
            &detail,
            Some(&account.token),
            None,
        )
        .await
        .json()["recent_checks"][0]
            .clone()
    };
    assert!(
        eventually(20, || async { checked().await.is_object() }).await,
        "the monitor is checked"
    );
    let check = checked().await;
    assert_eq!(check["ok"], false);
    assert_eq!(check["failure"], "connect");
    let error = check["error"].as_str().unwrap();
    assert!(error.contains("not allowed"), "{error}");
    assert!(error.contains("loopback"), "{error}");
    for address in ["127.0.0.1", "::1"] {
        assert!(
            !error.contains(address),
            "the error names {address}: {error}"
        );
    }
    assert_eq!(target.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// Two instances
// ---------------------------------------------------------------------------------------------

fn observe_process(db_url: &str) -> tokio::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_observe"));
    for (name, _) in std::env::vars() {
        if name.starts_with("OBSERVE")
            || matches!(
                name.as_str(),
                "SECRET_KEY" | "DATABASE_URL" | "REDIS_URL" | "RUST_LOG"
            )
        {
            cmd.env_remove(name);
        }
    }
    cmd.arg("serve")
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", env_var("REDIS_URL").expect("REDIS_URL"))
        .env("OBSERVE_BIND", format!("127.0.0.1:{}", free_port()))
        .env("OBSERVE_LOG_LEVEL", "warn")
        .env("OBSERVE__MONITORS__ALLOW_PRIVATE_TARGETS", "true")
        .env("OBSERVE__MONITORS__INTERVAL_DIVISOR", "200")
        .env("OBSERVE__MONITORS__RETRY_DELAY_MS", "20")
        .env("OBSERVE__MONITORS__WRITE_INTERVAL_MS", "50")
        .env("OBSERVE__MONITORS__SYNC_INTERVAL_SECS", "1")
        .env("OBSERVE__MONITORS__LEASE_SECS", "2")
        .env("OBSERVE__MONITORS__SHARDS", "8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start observe")
}

/// Live shard leases by owner.
async fn owners(db: &Db<'_>) -> Vec<(String, i64)> {
    db.all(
        "SELECT owner, count(*) FROM monitor_shards \
         WHERE shard >= 0 AND owner IS NOT NULL AND lease_until > now() \
         GROUP BY owner ORDER BY owner",
        &[],
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[actix_web::test]
async fn two_instances_split_the_shards_and_a_dead_ones_monitors_move() {
    let settings = test_settings();
    let db_url = fresh_database(&settings.database).await;
    let (client, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    let db = Db::Client(&client);
    let target = Target::start().await;
    let project = Uuid::new_v4();
    let organisation = Uuid::new_v4();
    db.exec(
        "INSERT INTO organisations (id, name, tier) VALUES ($1, 'two', 'team')",
        &[&organisation],
    )
    .await;
    db.exec(
        "INSERT INTO projects (id, organisation_id, name) VALUES ($1, $2, 'p')",
        &[&project, &organisation],
    )
    .await;

    let mut first = observe_process(&db_url);
    assert!(
        eventually(60, || async { owners(&db).await.len() == 1 }).await,
        "the first instance claims the shards"
    );
    let mut second = observe_process(&db_url);
    assert!(
        eventually(60, || async {
            let o = owners(&db).await;
            o.len() == 2 && o.iter().all(|(_, n)| *n == 4)
        })
        .await,
        "a second instance gets half the shards: {:?}",
        owners(&db).await
    );

    let url = target.url();
    let mut monitors = Vec::new();
    for _ in 0..16 {
        monitors.push(insert_monitor(&db, project, NewMonitor::at(&url)).await);
    }
    assert!(
        eventually(60, || async {
            let rows = db
                .all(
                    "SELECT count(*) FROM monitor_checks GROUP BY monitor_id HAVING count(*) >= 5",
                    &[],
                )
                .await;
            rows.len() == monitors.len()
        })
        .await,
        "every monitor is checked (found through the change poll)"
    );
    // Each monitor by exactly one instance: no slot twice, no two checks closer than half
    // an interval (two instances would interleave theirs).
    let duplicates = db
        .count(
            "SELECT count(*) FROM (SELECT monitor_id, scheduled_at FROM monitor_checks \
             GROUP BY 1, 2 HAVING count(*) > 1) d",
            &[],
        )
        .await;
    assert_eq!(duplicates, 0);
    let min_gap_ms: f64 = db
        .one(
            "SELECT coalesce(min(gap), 1e9)::float8 FROM ( \
                 SELECT extract(epoch FROM started_at - lag(started_at) OVER \
                     (PARTITION BY monitor_id ORDER BY started_at)) * 1000 AS gap \
                 FROM monitor_checks) g WHERE gap IS NOT NULL",
            &[],
        )
        .await
        .get(0);
    assert!(min_gap_ms >= 150.0, "two checks {min_gap_ms} ms apart");
    assert_eq!(owners(&db).await.len(), 2);

    // The first instance dies without releasing anything.
    first.kill().await.unwrap();
    let killed = Utc::now();
    assert!(
        eventually(60, || async {
            let o = owners(&db).await;
            o.len() == 1 && o[0].1 == 8
        })
        .await,
        "the survivor takes every shard once the leases ran out: {:?}",
        owners(&db).await
    );
    let moved_at = Utc::now();
    assert!(
        eventually(60, || async {
            let rows = db
                .all(
                    "SELECT monitor_id FROM monitor_checks WHERE started_at > $1 \
                     GROUP BY monitor_id HAVING count(*) >= 2",
                    &[&moved_at],
                )
                .await;
            rows.len() == monitors.len()
        })
        .await,
        "every monitor is checked again after the move (killed at {killed})"
    );
    second.kill().await.unwrap();
}
