//! The PartitionKeeper creates each daily partition in a transaction of its own, bounded by a
//! `lock_timeout`: a table someone holds a lock on (a long query, a migration) is skipped and
//! retried later, and never holds up the partitions of the other tables, nor ingestion.

use chrono::{Duration as Days, Utc};
use secrecy::SecretString;
use serde_json::json;
use tokio_postgres::NoTls;

use crate::helpers::{eventually, fresh_database, ingest, sdk, spawn_app_with, test_settings};

/// `parent`'s partition `days` days from today (UTC).
fn partition(parent: &str, days: i64) -> String {
    let day = Utc::now().date_naive() + Days::days(days);
    format!("{parent}_p{}", day.format("%Y%m%d"))
}

async fn exists(client: &tokio_postgres::Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[actix_web::test]
async fn a_locked_table_delays_only_its_own_partitions_never_the_others_or_ingestion() {
    let settings = test_settings();
    let db_url = fresh_database(&settings.database).await;
    // Someone holds a lock on `metrics` (a long report, a migration): creating a partition of
    // it needs ACCESS EXCLUSIVE on the table, so it must wait, or give up.
    let mut blocker = connect(&db_url).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE metrics IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let observer = connect(&db_url).await;

    let url = db_url.clone();
    let app = spawn_app_with(
        move |s| {
            s.database.url = SecretString::from(url);
            // Days 8 to 10 do not exist yet in any table: the keeper has work at start.
            s.ingest.partitions_ahead_days = 10;
        },
        None,
    )
    .await;

    // The other tables' partitions are committed while `metrics` is locked.
    for parent in ["events", "errors", "requests", "monitor_checks"] {
        let name = partition(parent, 10);
        assert!(
            eventually(10, || async { exists(&observer, &name).await }).await,
            "{name} was not committed while metrics was locked"
        );
    }
    // Ingestion into the other tables is not held up.
    let sdk = sdk(&app).await;
    let reply = ingest(
        &app,
        &sdk.key,
        "events",
        json!({"event": "signup", "visitor_id": "v1"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    // `metrics`' partition was skipped, not waited for.
    assert!(!exists(&observer, &partition("metrics", 10)).await);
    assert!(
        eventually(10, || async {
            app.logs.json_lines().iter().any(|l| {
                l["message"] == "partition not created; retried later"
                    && l["partition"] == partition("metrics", 10).as_str()
            })
        })
        .await,
        "the skipped partition is logged"
    );

    // The lock gone, the next run creates it.
    lock.rollback().await.unwrap();
    let mut client = app.state.db.get().await.unwrap();
    let report = observe_core::store::partitions::ensure(
        &mut client,
        10,
        std::time::Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(report.created.contains(&partition("metrics", 10)));
    assert!(exists(&observer, &partition("metrics", 10)).await);
}
