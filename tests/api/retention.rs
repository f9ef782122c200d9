//! Retention (issue 11, item 4), calling the job's work directly against real PostgreSQL: each
//! tier keeps its own retention, partitions past the longest one are dropped whole, shorter
//! tiers' rows leave shared partitions in batches, a tier change applies from the next run, one
//! run is bounded and the next finishes, error groups go with their last occurrence, and stale
//! sessions and tokens are removed while what security checks need stays.

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use observe_core::config::RetentionSettings;
use observe_core::retention::Table;
use observe_core::store::retention::{self, Report};
use uuid::Uuid;

use crate::helpers::{
    create_project, refresh_with, register, set_cookie, set_tier, spawn_app, spawn_app_with,
    TestApp,
};

const RAW: [&str; 5] = ["events", "errors", "requests", "metrics", "monitor_checks"];

/// The time column of each raw table.
fn time_column(table: &str) -> &'static str {
    if table == "monitor_checks" {
        "started_at"
    } else {
        "ts"
    }
}

/// A project of a new organisation on `tier`.
async fn project_on(app: &TestApp, tier: &str) -> Uuid {
    let account = register(app).await;
    let project = create_project(app, &account.token, tier).await;
    set_tier(app, &project, tier).await;
    project.parse().unwrap()
}

/// One row of `table` for `project` at `at`.
async fn insert(app: &TestApp, table: &str, project: Uuid, at: DateTime<Utc>) {
    let sql = match table {
        "events" => "INSERT INTO events (project_id, ts, received_at, name, visitor_id, properties)
                     VALUES ($1, $2, $2, 'signup', 'v1', '{}')",
        "errors" => "INSERT INTO errors (project_id, ts, received_at, fingerprint, type, message, level, tags)
                     VALUES ($1, $2, $2, 'fp', 'TypeError', 'boom', 'error', '{}')",
        "requests" => "INSERT INTO requests (project_id, ts, received_at, method, route, status_code, duration_ms)
                       VALUES ($1, $2, $2, 'GET', '/users/{id}', 200, 12.5)",
        "metrics" => "INSERT INTO metrics (project_id, ts, received_at, name, kind, value, labels)
                      VALUES ($1, $2, $2, 'revenue', 'counter', 1, '{}')",
        "monitor_checks" => "INSERT INTO monitor_checks (monitor_id, project_id, scheduled_at, started_at, ok)
                             VALUES (gen_random_uuid(), $1, $2, $2, true)",
        other => panic!("no such raw table {other}"),
    };
    let conn = app.state.db.get().await.unwrap();
    conn.execute(sql, &[&project, &at]).await.unwrap();
}

/// A row `days` days (and an hour) before `now` in every raw table.
async fn insert_everywhere(app: &TestApp, project: Uuid, now: DateTime<Utc>, days: i64) {
    for table in RAW {
        insert(app, table, project, aged(now, days)).await;
    }
}

fn aged(now: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    now - Duration::days(days) - Duration::hours(1)
}

/// The ages in whole days of `project`'s rows in `table`, oldest first.
async fn ages(app: &TestApp, table: &str, project: Uuid, now: DateTime<Utc>) -> Vec<i64> {
    let conn = app.state.db.get().await.unwrap();
    let sql = format!(
        "SELECT floor(extract(epoch FROM ($2::timestamptz - {})) / 86400)::bigint AS age
         FROM {table} WHERE project_id = $1 ORDER BY age DESC",
        time_column(table)
    );
    conn.query(&sql, &[&project, &now])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The daily partition of `table` for the UTC day `days` days before `now`, created (before any
/// row of that day exists, so the DEFAULT partition holds none of them).
async fn day_partition(app: &TestApp, table: &str, now: DateTime<Utc>, days: i64) -> String {
    let day: NaiveDate = (now - Duration::days(days)).date_naive();
    let next = day + chrono::Days::new(1);
    let name = format!("{table}_p{}", day.format("%Y%m%d"));
    let conn = app.state.db.get().await.unwrap();
    conn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}
         FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')"
    ))
    .await
    .unwrap();
    name
}

async fn exists(app: &TestApp, relation: &str) -> bool {
    let conn = app.state.db.get().await.unwrap();
    conn.query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await
        .unwrap()
        .get(0)
}

async fn run_with(app: &TestApp, settings: &RetentionSettings, now: DateTime<Utc>) -> Report {
    let mut client = app.state.db.get().await.unwrap();
    retention::run(&mut client, &app.state.tiers, settings, now)
        .await
        .unwrap()
}

async fn run(app: &TestApp, now: DateTime<Utc>) -> Report {
    run_with(app, &app.state.settings.retention, now).await
}

fn rows_of(report: &Report, table: &str) -> u64 {
    report.table(table).map_or(0, |t| t.rows_deleted)
}

#[actix_web::test]
async fn each_tier_keeps_its_own_retention_in_every_raw_table() {
    let app = spawn_app().await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    let pro = project_on(&app, "pro").await;
    let team = project_on(&app, "team").await;
    // Days 10 and 100 get partitions of their own, shared by the three organisations; day 200
    // lands in DEFAULT.
    for table in RAW {
        day_partition(&app, table, now, 10).await;
        day_partition(&app, table, now, 100).await;
    }
    for project in [hobby, pro, team] {
        for days in [1, 10, 100, 200] {
            insert_everywhere(&app, project, now, days).await;
        }
    }
    // Monthly usage is history: kept whatever its age.
    let conn = app.state.db.get().await.unwrap();
    conn.execute(
        "INSERT INTO usage (organisation_id, month, category, count)
         SELECT organisation_id, date '2020-01-01', 'events', 42 FROM projects WHERE id = $1",
        &[&hobby],
    )
    .await
    .unwrap();

    let report = run(&app, now).await;

    for table in RAW {
        assert_eq!(
            ages(&app, table, hobby, now).await,
            vec![1],
            "hobby (7 days) keeps only its last week of {table}"
        );
        assert_eq!(
            ages(&app, table, pro, now).await,
            vec![10, 1],
            "pro (90 days) keeps its last 90 days of {table}"
        );
        assert_eq!(
            ages(&app, table, team, now).await,
            vec![200, 100, 10, 1],
            "team (365 days) keeps all of {table}"
        );
        // Hobby's three old rows and pro's two, one statement batch each partition.
        assert_eq!(rows_of(&report, table), 5, "{table}: {report:?}");
    }
    assert!(report.finished(), "{report:?}");
    let kept: i64 = conn
        .query_one(
            "SELECT count(*) FROM usage WHERE month = date '2020-01-01'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "usage rows are history and stay");
}

#[actix_web::test]
async fn partitions_past_the_longest_retention_are_dropped_whole() {
    let app = spawn_app().await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    let team = project_on(&app, "team").await;
    let mut old = Vec::new();
    for table in RAW {
        old.push(day_partition(&app, table, now, 400).await);
        old.push(day_partition(&app, table, now, 401).await);
        day_partition(&app, table, now, 300).await;
    }
    for project in [hobby, team] {
        for days in [300, 400, 401] {
            insert_everywhere(&app, project, now, days).await;
        }
    }
    // No partition of day 500 or 364: those rows are in DEFAULT. The first is past every
    // retention, the second only past hobby's.
    insert_everywhere(&app, team, now, 500).await;
    insert_everywhere(&app, team, now, 364).await;
    insert_everywhere(&app, hobby, now, 364).await;

    let report = run(&app, now).await;

    for name in &old {
        assert!(!exists(&app, name).await, "{name} is still there");
    }
    for table in RAW {
        let dropped = &report.table(table).unwrap().partitions_dropped;
        assert_eq!(dropped.len(), 2, "{table}: {report:?}");
        assert_eq!(
            ages(&app, table, team, now).await,
            vec![364, 300],
            "team keeps what is within 365 days of {table}"
        );
        assert!(ages(&app, table, hobby, now).await.is_empty());
        // Rows deleted one by one: team's day 500 in DEFAULT, hobby's days 364 (DEFAULT) and
        // 300; the dropped partitions' rows are not deleted row by row.
        assert_eq!(rows_of(&report, table), 3, "{table}: {report:?}");
    }
    assert!(report.finished(), "{report:?}");
}

#[actix_web::test]
async fn a_locked_table_keeps_its_old_partition_for_a_later_run_and_the_others_go_on() {
    let app = spawn_app().await;
    let now = Utc::now();
    let team = project_on(&app, "team").await;
    let mut old = Vec::new();
    for table in RAW {
        old.push(day_partition(&app, table, now, 400).await);
        insert(&app, table, team, aged(now, 400)).await;
    }
    // Someone reads `metrics` in a long transaction: dropping a partition needs the table's
    // ACCESS EXCLUSIVE lock, so it would wait, and every write to the table behind it.
    let mut blocker = app.state.db.get().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE metrics IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let settings = RetentionSettings {
        lock_timeout_ms: 200,
        ..app.state.settings.retention.clone()
    };

    let report = run_with(&app, &settings, now).await;
    let metrics = report.table("metrics").unwrap();
    assert!(metrics.partitions_dropped.is_empty(), "{report:?}");
    assert_eq!(metrics.partitions_skipped.len(), 1, "{report:?}");
    assert_eq!(metrics.partitions_skipped[0].partition, old[3]);
    assert_eq!(metrics.partitions_skipped[0].reason, "lock_timeout");
    assert_eq!(metrics.left.partitions_to_drop, 1);
    assert!(!report.finished());
    for (table, name) in RAW.iter().zip(&old) {
        assert_eq!(exists(&app, name).await, *table == "metrics", "{name}");
    }

    lock.rollback().await.unwrap();
    let report = run_with(&app, &settings, now).await;
    assert_eq!(
        report.table("metrics").unwrap().partitions_dropped,
        vec![old[3].clone()]
    );
    assert!(report.finished(), "{report:?}");
}

#[actix_web::test]
async fn a_table_whose_work_fails_is_reported_and_the_others_go_on() {
    // Statements give up after half a second (a stuck table must not hold the run).
    let app = spawn_app_with(|s| s.database.statement_timeout_ms = 500, None).await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    insert(&app, "events", hobby, aged(now, 10)).await;
    insert(&app, "errors", hobby, aged(now, 10)).await;
    let conn = app.state.db.get().await.unwrap();
    conn.execute(
        "INSERT INTO user_tokens (token_hash, user_id, purpose, expires_at)
         SELECT '\\x01'::bytea, id, 'password_reset', now() - interval '1 hour' FROM users LIMIT 1",
        &[],
    )
    .await
    .unwrap();
    // Someone holds `errors` (a migration, a VACUUM FULL): deleting from it times out.
    let mut blocker = app.state.db.get().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE errors IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let report = run(&app, now).await;

    let errors = report.table("errors").unwrap();
    assert!(
        errors
            .error
            .as_deref()
            .is_some_and(|e| e.contains("statement timeout")),
        "{report:?}"
    );
    assert!(!report.finished());
    assert_eq!(rows_of(&report, "events"), 1, "{report:?}");
    assert_eq!(rows_of(&report, "user_tokens"), 1, "{report:?}");
    lock.rollback().await.unwrap();
    assert_eq!(ages(&app, "errors", hobby, now).await, vec![10]);
    let report = run(&app, now).await;
    assert_eq!(rows_of(&report, "errors"), 1, "{report:?}");
    assert!(report.finished(), "{report:?}");
}

#[actix_web::test]
async fn a_rollup_table_in_the_hook_is_kept_as_long_as_the_raw_rows_it_sums() {
    let app = spawn_app().await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    let team = project_on(&app, "team").await;
    let conn = app.state.db.get().await.unwrap();
    // Not partitioned, one row per project and hour, as an hourly rollup would be.
    conn.batch_execute(
        "CREATE TABLE hourly_test (project_id uuid NOT NULL, hour timestamptz NOT NULL);
         CREATE INDEX ON hourly_test (project_id, hour);",
    )
    .await
    .unwrap();
    let hour = |t: DateTime<Utc>| t.duration_trunc(Duration::hours(1)).unwrap();
    // The hour hobby's 7 days end in still sums rows inside them; the one before does not.
    let boundary = hour(now - Duration::days(7));
    for (project, at) in [
        (hobby, boundary - Duration::hours(2)),
        (hobby, boundary - Duration::hours(1)),
        (hobby, boundary),
        (team, hour(now - Duration::days(400))),
        (team, hour(now - Duration::days(300))),
    ] {
        conn.execute(
            "INSERT INTO hourly_test (project_id, hour) VALUES ($1, $2)",
            &[&project, &at],
        )
        .await
        .unwrap();
    }
    let table = Table {
        name: "hourly_test",
        time_column: "hour",
        span_secs: 3600,
    };

    let mut client = app.state.db.get().await.unwrap();
    let report = retention::sweep(
        &mut client,
        &app.state.tiers,
        &app.state.settings.retention,
        now,
        &table,
    )
    .await
    .unwrap();

    let kept = |project: Uuid| {
        let conn = &conn;
        async move {
            conn.query(
                "SELECT hour FROM hourly_test WHERE project_id = $1 ORDER BY hour",
                &[&project],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, DateTime<Utc>>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(kept(hobby).await, vec![boundary]);
    assert_eq!(kept(team).await, vec![hour(now - Duration::days(300))]);
    assert_eq!(report.rows_deleted, 3, "{report:?}");
    assert!(report.partitions_dropped.is_empty());
    assert!(report.finished());
}

#[actix_web::test]
async fn a_tier_change_applies_from_the_next_run() {
    let app = spawn_app().await;
    let now = Utc::now();
    let project = project_on(&app, "team").await;
    insert_everywhere(&app, project, now, 30).await;
    run(&app, now).await;
    assert_eq!(ages(&app, "events", project, now).await, vec![30]);

    set_tier(&app, &project.to_string(), "hobby").await;
    let report = run(&app, now).await;
    for table in RAW {
        assert!(
            ages(&app, table, project, now).await.is_empty(),
            "{table} outlives the downgrade: {report:?}"
        );
    }
}

#[actix_web::test]
async fn one_run_is_bounded_and_the_next_finishes() {
    let app = spawn_app().await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    let team = project_on(&app, "team").await;
    let old = [
        day_partition(&app, "events", now, 400).await,
        day_partition(&app, "events", now, 401).await,
    ];
    insert(&app, "events", team, aged(now, 400)).await;
    insert(&app, "events", team, aged(now, 401)).await;
    for _ in 0..8 {
        insert(&app, "events", hobby, aged(now, 10)).await;
    }
    let bounds = RetentionSettings {
        batch_rows: 3,
        max_rows_per_table: 5,
        max_partitions_per_table: 1,
        ..app.state.settings.retention.clone()
    };

    let first = run_with(&app, &bounds, now).await;
    let events = first.table("events").unwrap();
    assert_eq!(events.rows_deleted, 5, "{first:?}");
    assert_eq!(
        events.partitions_dropped,
        vec![old[1].clone()],
        "oldest first"
    );
    assert_eq!(events.left.partitions_to_drop, 1, "{first:?}");
    assert!(events.left.unswept >= 1, "{first:?}");
    assert!(!first.finished());
    assert_eq!(ages(&app, "events", hobby, now).await.len(), 3);
    assert!(exists(&app, &old[0]).await);

    let second = run_with(&app, &bounds, now).await;
    let events = second.table("events").unwrap();
    assert_eq!(events.rows_deleted, 3, "{second:?}");
    assert_eq!(events.partitions_dropped, vec![old[0].clone()]);
    assert!(second.finished(), "{second:?}");
    assert!(ages(&app, "events", hobby, now).await.is_empty());
    assert!(!exists(&app, &old[0]).await);
    assert!(ages(&app, "events", team, now).await.is_empty());
}

#[actix_web::test]
async fn error_groups_go_once_their_last_occurrence_is_past_retention() {
    let app = spawn_app().await;
    let now = Utc::now();
    let hobby = project_on(&app, "hobby").await;
    let team = project_on(&app, "team").await;
    let conn = app.state.db.get().await.unwrap();
    for (project, fingerprint, days, people) in [
        (hobby, "old", 10, 2),
        (hobby, "recent", 1, 1),
        (team, "old", 10, 1),
    ] {
        let last_seen = aged(now, days);
        conn.execute(
            "INSERT INTO error_groups (project_id, fingerprint, type, message, level, first_seen,
                                       last_seen, occurrences, affected_people, last_occurrence)
             VALUES ($1, $2, 'TypeError', 'boom', 'error', $3, $3, 1, $4, '{}')",
            &[&project, &fingerprint, &last_seen, &i64::from(people)],
        )
        .await
        .unwrap();
        for n in 0..people {
            conn.execute(
                "INSERT INTO error_group_people (project_id, fingerprint, person) VALUES ($1, $2, $3)",
                &[&project, &fingerprint, &format!("user-{n}")],
            )
            .await
            .unwrap();
        }
    }

    let report = run(&app, now).await;

    let groups = |project: Uuid| {
        let conn = &conn;
        async move {
            conn.query(
                "SELECT fingerprint FROM error_groups WHERE project_id = $1 ORDER BY fingerprint",
                &[&project],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(groups(hobby).await, vec!["recent"]);
    assert_eq!(groups(team).await, vec!["old"]);
    let people: i64 = conn
        .query_one(
            "SELECT count(*) FROM error_group_people WHERE project_id = $1 AND fingerprint = 'old'",
            &[&hobby],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(people, 0, "the group's people go with it");
    assert_eq!(rows_of(&report, "error_groups"), 1, "{report:?}");
    assert_eq!(rows_of(&report, "error_group_people"), 2, "{report:?}");
}

/// The session ids of the account signed up as `email`.
async fn sessions_of(app: &TestApp, email: &str) -> Vec<Uuid> {
    let conn = app.state.db.get().await.unwrap();
    conn.query(
        "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = $1",
        &[&email],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn count(app: &TestApp, sql: &str, id: Uuid) -> i64 {
    let conn = app.state.db.get().await.unwrap();
    conn.query_one(sql, &[&id]).await.unwrap().get(0)
}

#[actix_web::test]
async fn stale_sessions_and_tokens_go_while_live_ones_and_reuse_detection_stay() {
    // No grace window: any second use of a rotated refresh token is a reuse.
    let app = spawn_app_with(|s| s.auth.refresh_reuse_grace_secs = 0, None).await;
    let now = Utc::now();
    let conn = app.state.db.get().await.unwrap();

    // A live session whose first refresh token was rotated: the rotated one must stay
    // findable, or presenting it again (a thief's copy) would no longer revoke the session.
    let live = register(&app).await;
    let rotated = refresh_with(&app, &live.refresh).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert!(set_cookie(&rotated, "refresh_token").is_some());
    let live_session = sessions_of(&app, &live.email).await[0];
    // Plus a token of it that expired unused: nothing can use or detect anything with it.
    conn.execute(
        "INSERT INTO refresh_tokens (id, family_id, user_id, organisation_id, token_hash, expires_at)
         SELECT gen_random_uuid(), id, user_id, organisation_id, '\\x00ff'::bytea, now() - interval '1 day'
         FROM sessions WHERE id = $1",
        &[&live_session],
    )
    .await
    .unwrap();

    // A session past its absolute lifetime a week and more ago; one revoked 10 days ago; one
    // revoked an hour ago (kept a while, for operators).
    let expired = register(&app).await;
    let expired_session = sessions_of(&app, &expired.email).await[0];
    conn.execute(
        "UPDATE sessions SET expires_at = now() - interval '10 days' WHERE id = $1",
        &[&expired_session],
    )
    .await
    .unwrap();
    let revoked_long_ago = register(&app).await;
    let revoked_long_ago_session = sessions_of(&app, &revoked_long_ago.email).await[0];
    let revoked_lately = register(&app).await;
    let revoked_lately_session = sessions_of(&app, &revoked_lately.email).await[0];
    for (id, ago) in [
        (revoked_long_ago_session, "10 days"),
        (revoked_lately_session, "1 hour"),
    ] {
        conn.execute(
            &format!("UPDATE sessions SET revoked_at = now() - interval '{ago}' WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
        conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    }

    // Emailed tokens: one used, one expired, one still good.
    let user: Uuid = conn
        .query_one(
            "SELECT user_id FROM sessions WHERE id = $1",
            &[&live_session],
        )
        .await
        .unwrap()
        .get(0);
    for (hash, expires, used) in [
        (vec![1u8], "now() + interval '1 hour'", "now()"),
        (vec![2u8], "now() - interval '1 minute'", "NULL"),
        (vec![3u8], "now() + interval '1 hour'", "NULL"),
    ] {
        conn.execute(
            &format!(
                "INSERT INTO user_tokens (token_hash, user_id, purpose, expires_at, used_at)
                 VALUES ($1, $2, 'password_reset', {expires}, {used})"
            ),
            &[&hash, &user],
        )
        .await
        .unwrap();
    }

    let report = run(&app, now).await;

    let sessions = "SELECT count(*) FROM sessions WHERE id = $1";
    assert_eq!(count(&app, sessions, live_session).await, 1);
    assert_eq!(count(&app, sessions, revoked_lately_session).await, 1);
    assert_eq!(count(&app, sessions, expired_session).await, 0);
    assert_eq!(count(&app, sessions, revoked_long_ago_session).await, 0);
    let tokens = "SELECT count(*) FROM refresh_tokens WHERE family_id = $1";
    assert_eq!(
        count(&app, tokens, live_session).await,
        2,
        "the live session keeps its rotated token and its current one, not the expired one"
    );
    assert_eq!(count(&app, tokens, revoked_lately_session).await, 1);
    assert_eq!(count(&app, tokens, expired_session).await, 0);
    assert_eq!(count(&app, tokens, revoked_long_ago_session).await, 0);
    let left: Vec<Vec<u8>> = conn
        .query(
            "SELECT token_hash FROM user_tokens WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left,
        vec![vec![3u8]],
        "only the unused, unexpired link stays"
    );
    assert_eq!(rows_of(&report, "sessions"), 2, "{report:?}");
    // The expired session's and the long-revoked one's tokens, and the live one's expired one.
    assert_eq!(rows_of(&report, "refresh_tokens"), 3, "{report:?}");
    assert_eq!(rows_of(&report, "user_tokens"), 2, "{report:?}");

    // The rotated token presented again is still caught as a reuse, and ends the session.
    let reuse = refresh_with(&app, &live.refresh).await;
    assert_eq!(reuse.status, 401, "{}", reuse.text);
    assert_eq!(reuse.json()["error"]["code"], "refresh_token_reused");
    let revoked = "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NOT NULL";
    assert_eq!(count(&app, revoked, live_session).await, 1);
}
