//! Background jobs on cron ticks: each tick runs once across instances, a tick missed while
//! observe was down is caught up at start, and a failed run is made good by the next tick.
//! The runners here carry test jobs (a counter, a job that fails once) on the apps' own
//! supervisors and databases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::LocalBoxFuture;
use observe_actors::jobs::{self, Job, JobError};
use observe_core::jobs::{Ran, Schedule};

use crate::helpers::{eventually, spawn_app, spawn_app_with, TestApp};

/// Counts its runs; fails the runs whose number is in `fail_runs` (1 = the first).
struct Counting {
    name: &'static str,
    runs: Arc<AtomicU64>,
    fail_runs: Vec<u64>,
}

impl Job for Counting {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, _tick: DateTime<Utc>) -> LocalBoxFuture<'static, Result<Ran, JobError>> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = self.fail_runs.contains(&n);
        Box::pin(async move {
            if fail {
                Err("the test job fails this run".into())
            } else {
                Ok(Ran { rows: n })
            }
        })
    }
}

fn run_on(app: &TestApp, job: Counting, schedule: &str) {
    jobs::start(
        &app.state.supervisor,
        &actix::Arbiter::current(),
        Arc::new(job),
        Schedule::parse(schedule).unwrap(),
        app.state.db.clone(),
        Arc::new(app.state.settings.jobs.clone()),
        app.state.metrics.clone(),
    );
}

/// `(scheduled_for, result)` of every recorded run of `job`, oldest first.
async fn runs_of(app: &TestApp, job: &str) -> Vec<(DateTime<Utc>, Option<String>)> {
    app.state
        .db
        .get()
        .await
        .unwrap()
        .query(
            "SELECT scheduled_for, result FROM job_runs WHERE job = $1 ORDER BY scheduled_for",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_web::test]
async fn two_instances_run_each_tick_once() {
    let first = spawn_app().await;
    let db_url = first.db_url.clone();
    let second = spawn_app_with(
        move |s| s.database.url = secrecy::SecretString::from(db_url),
        None,
    )
    .await;
    let runs = Arc::new(AtomicU64::new(0));
    for app in [&first, &second] {
        let job = Counting {
            name: "every_second",
            runs: runs.clone(),
            fail_runs: vec![],
        };
        run_on(app, job, "* * * * * *");
    }
    assert!(
        eventually(20, || async {
            runs_of(&first, "every_second")
                .await
                .iter()
                .filter(|(_, r)| r.is_some())
                .count()
                >= 4
        })
        .await,
        "ticks did not run"
    );
    // Let any run in flight finish and be recorded, then compare work with ticks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = runs_of(&first, "every_second").await;
    let finished = recorded.iter().filter(|(_, r)| r.is_some()).count() as u64;
    let ran = runs.load(Ordering::SeqCst);
    assert!(
        ran == finished || ran == finished + 1 || ran + 1 == finished,
        "work done {ran} times for {finished} finished ticks"
    );
    let series = "observe_job_runs_total{job=\"every_second\"";
    let a = metric_sum(&first.get_text("/metrics").await.1, series);
    let b = metric_sum(&second.get_text("/metrics").await.1, series);
    assert!(
        a + b <= ran as f64 && a + b + 2.0 >= ran as f64,
        "instances counted {a} + {b} runs for {ran}"
    );
    assert_eq!(
        recorded.len(),
        recorded
            .iter()
            .map(|(t, _)| *t)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        "one row per tick"
    );
}

#[actix_web::test]
async fn a_tick_missed_while_down_is_caught_up_at_start_and_only_once() {
    let app = spawn_app().await;
    let runs = Arc::new(AtomicU64::new(0));
    let job = || Counting {
        name: "hourly",
        runs: runs.clone(),
        fail_runs: vec![],
    };
    // Hourly at :00: the tick of this hour has passed, and nobody ran it.
    run_on(&app, job(), "0 0 * * * *");
    let this_hour = Schedule::parse("0 0 * * * *")
        .unwrap()
        .last_at_or_before(Utc::now())
        .unwrap();
    assert!(
        eventually(10, || async {
            runs_of(&app, "hourly").await == vec![(this_hour, Some("ok".to_string()))]
        })
        .await,
        "the missed tick was not caught up: {:?}",
        runs_of(&app, "hourly").await
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Another instance starting now finds it done.
    run_on(&app, job(), "0 0 * * * *");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "caught up twice");
    let text = app.get_text("/metrics").await.1;
    assert!(
        text.contains("observe_job_last_success_timestamp_seconds{job=\"hourly\"}"),
        "{text}"
    );
}

#[actix_web::test]
async fn a_failed_run_is_recorded_and_the_next_tick_runs() {
    let app = spawn_app().await;
    let runs = Arc::new(AtomicU64::new(0));
    let job = Counting {
        name: "flaky",
        runs: runs.clone(),
        fail_runs: vec![1],
    };
    run_on(&app, job, "* * * * * *");
    assert!(
        eventually(20, || async {
            let results: Vec<Option<String>> = runs_of(&app, "flaky")
                .await
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            results.first() == Some(&Some("failed".to_string()))
                && results.iter().any(|r| r.as_deref() == Some("ok"))
        })
        .await,
        "no failed run followed by a good one: {:?}",
        runs_of(&app, "flaky").await
    );
    let text = app.get_text("/metrics").await.1;
    assert_eq!(
        metric_sum(
            &text,
            "observe_job_runs_total{job=\"flaky\",result=\"failed\"}"
        ),
        1.0
    );
    assert!(metric_sum(&text, "observe_job_runs_total{job=\"flaky\",result=\"ok\"}") >= 1.0);
    let failed_error: Option<String> = app
        .state
        .db
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT error FROM job_runs WHERE job = 'flaky' AND result = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed_error.as_deref(), Some("the test job fails this run"));
}

#[actix_web::test]
async fn a_starting_instance_reports_the_last_success_of_any_instance() {
    let app = spawn_app().await;
    // Another instance ran the last tick (so this one has nothing to catch up).
    let schedule = "0 0 3 * * *";
    let tick = Schedule::parse(schedule)
        .unwrap()
        .last_at_or_before(Utc::now())
        .unwrap();
    let finished = tick + chrono::Duration::seconds(2);
    app.state
        .db
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO job_runs (job, scheduled_for, claimed_by, finished_at, result)
             VALUES ('daily', $1, 'elsewhere', $2, 'ok')",
            &[&tick, &finished],
        )
        .await
        .unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    run_on(
        &app,
        Counting {
            name: "daily",
            runs: runs.clone(),
            fail_runs: vec![],
        },
        schedule,
    );
    let reported = || async {
        let text = app.get_text("/metrics").await.1;
        metric_sum(
            &text,
            "observe_job_last_success_timestamp_seconds{job=\"daily\"}",
        )
    };
    assert!(
        eventually(10, || async {
            reported().await == finished.timestamp() as f64
        })
        .await,
        "the gauge was not seeded from job_runs: {}",
        reported().await
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "this instance ran nothing");
}
