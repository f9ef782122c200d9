//! The migration runner against real PostgreSQL: idempotent, safe when instances race, and a
//! changed or unknown applied migration stops the start.

use observe::startup::{Application, StartupError};
use observe_core::db::{self, DbError};
use observe_core::migrate::{self, MigrateError};
use secrecy::SecretString;
use tokio_postgres::NoTls;

use crate::helpers::{empty_database, test_settings};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    actix_web::rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Settings pointing at a new database that has been migrated, and a client on it that has
/// run `tamper` (to edit the migration record as an operator or a newer build would have).
async fn migrated_then(tamper: &str) -> observe_core::config::Settings {
    let mut settings = test_settings();
    let url = empty_database(&settings.database).await;
    settings.database.url = SecretString::from(url.clone());
    db::migrate(&settings.database).await.unwrap();
    connect(&url).await.execute(tamper, &[]).await.unwrap();
    settings
}

#[actix_web::test]
async fn instances_migrating_at_once_apply_each_migration_exactly_once() {
    let mut settings = test_settings();
    let url = empty_database(&settings.database).await;
    settings.database.url = SecretString::from(url.clone());
    let runs = (0..4).map(|_| {
        let db = settings.database.clone();
        async move { db::migrate(&db).await }
    });
    let results = futures_util::future::join_all(runs).await;
    let applied: usize = results.into_iter().map(|r| r.unwrap().len()).sum();
    let expected = migrate::embedded().unwrap().len();
    assert_eq!(
        applied, expected,
        "each migration applied by exactly one instance"
    );

    let client = connect(&url).await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, expected);
    // Again: nothing to do.
    assert!(db::migrate(&settings.database).await.unwrap().is_empty());
    // The foundation's tables exist.
    client
        .query("SELECT job, scheduled_for FROM job_runs", &[])
        .await
        .unwrap();
    client
        .query("SELECT name, lease_until FROM leases", &[])
        .await
        .unwrap();
}

#[actix_web::test]
async fn an_edited_applied_migration_is_a_startup_error() {
    let mut settings =
        migrated_then("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1").await;

    let err = db::migrate(&settings.database).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Migrate(MigrateError::Modified { version: 1, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("was changed after it was applied"),
        "{err}"
    );

    settings.validate().unwrap();
    let err = match Application::build(settings).await {
        Ok(_) => panic!("the server must not start on an edited migration"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            StartupError::Db(DbError::Migrate(MigrateError::Modified { .. }))
        ),
        "{err}"
    );
}

#[actix_web::test]
async fn a_migration_unknown_to_this_build_is_a_startup_error() {
    let settings = migrated_then(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, '9999_future', 'x')",
    )
    .await;
    let err = db::migrate(&settings.database).await.unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Migrate(MigrateError::Unknown { version: 9999, .. })
        ),
        "{err}"
    );
}

#[actix_web::test]
async fn an_unreachable_database_at_start_is_a_clear_error_after_the_startup_timeout() {
    let mut settings = test_settings();
    settings.database.url = SecretString::from(format!(
        "postgres://observe@127.0.0.1:{}/observe",
        crate::helpers::free_port()
    ));
    settings.database.connect_timeout_secs = 1;
    settings.server.startup_timeout_secs = 1;
    settings.validate().unwrap();
    let err = match Application::build(settings).await {
        Ok(_) => panic!("must not start without a database"),
        Err(e) => e,
    };
    assert!(
        matches!(err, StartupError::DatabaseNotReachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("check DATABASE_URL"), "{err}");
}

#[actix_web::test]
async fn a_migration_lock_held_elsewhere_fails_the_start_within_its_timeout() {
    let mut settings = test_settings();
    let url = empty_database(&settings.database).await;
    settings.database.url = SecretString::from(url.clone());
    settings.server.startup_timeout_secs = 2;
    // Another (stuck) instance holds the migration lock on this database.
    let holder = connect(&url).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&migrate::LOCK_KEY])
        .await
        .unwrap();
    settings.validate().unwrap();
    let started = std::time::Instant::now();
    let err = match Application::build(settings).await {
        Ok(_) => panic!("must not start while the lock is held"),
        Err(e) => e,
    };
    assert!(
        matches!(err, StartupError::DatabaseNotReachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("migration lock"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "bounded by the startup timeout"
    );
}
