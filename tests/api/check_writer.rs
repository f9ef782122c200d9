//! The CheckWriter under a database that refuses its writes for a while (issue 10 §5): a full
//! writer is backpressure — the monitors wait — and once writes succeed again every check that
//! ran has its row; none is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use uuid::Uuid;

use crate::helpers::{create_project, eventually, register, spawn_app_with, TestApp};

/// A local target that answers 200 and counts its hits.
async fn target() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counted = web::Data::from(hits.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(counted.clone())
            .default_service(web::to(|hits: web::Data<AtomicU64>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                HttpResponse::Ok().body("up")
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    (format!("http://127.0.0.1:{port}/health"), hits)
}

/// The sum of a counter's series in `/metrics` (0 when absent).
async fn counter(app: &TestApp, name: &str) -> f64 {
    app.get_text("/metrics")
        .await
        .1
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn rows(app: &TestApp) -> i64 {
    app.state
        .db
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM monitor_checks", &[])
        .await
        .unwrap()
        .get(0)
}

#[actix_web::test]
async fn a_full_check_writer_holds_the_monitors_back_and_loses_no_row() {
    let (url, hits) = target().await;
    let app = spawn_app_with(
        |s| {
            s.monitors.allow_private_targets = true;
            // 60 s runs every 300 ms.
            s.monitors.interval_divisor = 200;
            s.monitors.write_batch_rows = 1;
            s.monitors.write_interval_ms = 20;
            s.monitors.writer_buffer_rows = 3;
        },
        None,
    )
    .await;
    let account = register(&app).await;
    let project: Uuid = create_project(&app, &account.token, "watched")
        .await
        .parse()
        .unwrap();
    let conn = app.state.db.get().await.unwrap();
    // Check rows are refused, as by a server that cannot take them now (SQLSTATE 57P03, a
    // transient condition worth retrying), until the test lifts the block.
    conn.batch_execute(
        "CREATE TABLE test_block (blocked boolean NOT NULL);
         INSERT INTO test_block VALUES (true);
         CREATE FUNCTION test_block_checks() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT blocked FROM test_block) THEN
                 RAISE EXCEPTION 'not now' USING ERRCODE = '57P03';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_block_checks BEFORE INSERT ON monitor_checks
             FOR EACH ROW EXECUTE FUNCTION test_block_checks();",
    )
    .await
    .unwrap();
    for name in ["a", "b"] {
        let id: Uuid = conn
            .query_one(
                "INSERT INTO monitors (project_id, name, url, interval_seconds, timeout_seconds)
                 VALUES ($1, $2, $3, 60, 5) RETURNING id",
                &[&project, &name, &url],
            )
            .await
            .unwrap()
            .get(0);
        app.state.monitors.changed(id);
    }

    // The writer fills its three places, then the monitors wait: checks stop.
    let checks = "observe_monitor_checks_total";
    assert!(
        eventually(20, || async { counter(&app, checks).await >= 3.0 }).await,
        "the monitors never ran"
    );
    let stalled = eventually(20, || async {
        let before = hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        hits.load(Ordering::SeqCst) == before
    })
    .await;
    assert!(stalled, "checks went on while the writer was full");
    assert_eq!(rows(&app).await, 0, "nothing could be written yet");
    let waited = counter(&app, checks).await;
    assert!(
        waited <= 5.0,
        "3 places, and one check per monitor waiting: {waited}"
    );

    // Writes succeed again: every check that ran has its row, and the monitors go on.
    conn.execute("UPDATE test_block SET blocked = false", &[])
        .await
        .unwrap();
    let before = hits.load(Ordering::SeqCst);
    assert!(
        eventually(20, || async { hits.load(Ordering::SeqCst) >= before + 4 }).await,
        "the monitors did not resume"
    );
    // Every check counted by now has its row once the writer catches up, and no row is
    // there twice.
    let ran = counter(&app, checks).await;
    assert!(
        eventually(20, || async { rows(&app).await as f64 >= ran }).await,
        "rows {} for {ran} checks",
        rows(&app).await
    );
    assert!(rows(&app).await as f64 <= counter(&app, checks).await);
    assert_eq!(
        counter(&app, "observe_monitor_check_rows_dropped_total").await,
        0.0
    );
}
