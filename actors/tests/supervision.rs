//! Supervision end to end on a real actix system: an actor that panics in a handler, or stops
//! itself on a failure, is restarted, logged and counted; a deliberate stop is not restarted;
//! the other actors keep answering throughout; full mailboxes refuse instead of growing;
//! drains reach every drainable actor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use observe_actors::{Backoff, Drain, Lifeline, Supervised, SupervisedActor, Supervisor};
use observe_core::metrics::Metrics;
use observe_core::telemetry;

/// A test actor: answers `Ping` with its incarnation number, panics on `Boom`, reports a
/// failure and stops on `Fail`, stops deliberately on `Quit`.
struct Crashy {
    incarnation: u32,
    lifeline: Lifeline,
    drained: Arc<AtomicU32>,
}

impl Actor for Crashy {
    type Context = Context<Self>;
}

impl SupervisedActor for Crashy {
    const KIND: &'static str = "Crashy";
    const MAILBOX: usize = 4;
}

#[derive(Message)]
#[rtype(result = "u32")]
struct Ping;

#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

#[derive(Message)]
#[rtype(result = "()")]
struct Fail;

#[derive(Message)]
#[rtype(result = "()")]
struct Quit;

/// Stops without saying why (neither `fail` nor `finish`).
#[derive(Message)]
#[rtype(result = "()")]
struct StopPlain;

impl Handler<StopPlain> for Crashy {
    type Result = ();
    fn handle(&mut self, _: StopPlain, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Blocks the actor for a while so its mailbox fills up.
#[derive(Message)]
#[rtype(result = "()")]
struct Sleep(Duration);

impl Handler<Ping> for Crashy {
    type Result = u32;
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> u32 {
        self.incarnation
    }
}

impl Handler<Boom> for Crashy {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("boom in handler");
    }
}

impl Handler<Fail> for Crashy {
    type Result = ();
    fn handle(&mut self, _: Fail, ctx: &mut Context<Self>) {
        self.lifeline.fail("lost its database connection");
        ctx.stop();
    }
}

impl Handler<Quit> for Crashy {
    type Result = ();
    fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
        self.lifeline.finish();
        ctx.stop();
    }
}

impl Handler<Sleep> for Crashy {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: Sleep, _: &mut Context<Self>) -> Self::Result {
        Box::pin(actix::fut::wrap_future(tokio::time::sleep(msg.0)))
    }
}

impl Handler<Drain> for Crashy {
    type Result = ();
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {
        self.drained.fetch_add(1, Ordering::SeqCst);
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(60),
    }
}

fn spawn_crashy(sup: &Supervisor, id: &str, drained: Arc<AtomicU32>) -> Supervised<Crashy> {
    let incarnations = Arc::new(AtomicU32::new(0));
    sup.spawn_drainable(id, &Arbiter::current(), move |lifeline| Crashy {
        incarnation: incarnations.fetch_add(1, Ordering::SeqCst) + 1,
        lifeline,
        drained: drained.clone(),
    })
}

/// Pings until the actor answers (it may be between incarnations), at most 5 s.
async fn ping_until_up(actor: &Supervised<Crashy>) -> u32 {
    for _ in 0..250 {
        if let Ok(n) = actor.addr().send(Ping).await {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("actor did not come back");
}

fn restart_lines(logs: &telemetry::LogCapture, id: &str) -> Vec<serde_json::Value> {
    logs.json_lines()
        .into_iter()
        .filter(|l| l["message"] == "actor restarted" && l["id"] == id)
        .collect()
}

fn restarts_counter(metrics: &Metrics) -> String {
    metrics
        .render()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("observe_actor_restarts_total{actor=\"Crashy\"}"))
        .unwrap_or("")
        .to_string()
}

#[actix_rt::test]
async fn a_panicking_actor_is_restarted_logged_and_counted_while_others_serve() {
    let logs = telemetry::capture();
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let victim = spawn_crashy(&sup, "victim-panic", Arc::default());
    let bystander = spawn_crashy(&sup, "bystander-panic", Arc::default());

    assert_eq!(victim.addr().send(Ping).await.unwrap(), 1);
    // The panic kills the incarnation: the caller sees the mailbox close, not a hang.
    assert!(victim.addr().send(Boom).await.is_err());
    // The rest of the system keeps serving meanwhile.
    assert_eq!(bystander.addr().send(Ping).await.unwrap(), 1);

    assert_eq!(
        ping_until_up(&victim).await,
        2,
        "a fresh incarnation answers"
    );
    assert_eq!(victim.restarts(), 1);
    assert_eq!(
        restarts_counter(&metrics),
        "observe_actor_restarts_total{actor=\"Crashy\"} 1"
    );

    let lines = restart_lines(&logs, "victim-panic");
    assert_eq!(lines.len(), 1, "one log line per restart: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["actor"], "Crashy");
    assert_eq!(line["reason"], "panic: boom in handler");
    assert_eq!(line["restarts"], 1);
    assert_eq!(line["level"], "WARN");
    // The panic itself went through tracing as a structured line too.
    assert!(logs
        .json_lines()
        .iter()
        .any(|l| l["message"] == "panic" && l["panic.message"] == "boom in handler"));
    assert_eq!(bystander.restarts(), 0);
}

#[actix_rt::test]
async fn a_failed_stop_is_restarted_with_its_reason_and_backoff_grows() {
    let logs = telemetry::capture();
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let victim = spawn_crashy(&sup, "victim-fail", Arc::default());

    for expected in 2..=4 {
        victim.addr().send(Fail).await.unwrap();
        assert_eq!(ping_until_up(&victim).await, expected);
    }
    assert_eq!(victim.restarts(), 3);
    assert_eq!(
        restarts_counter(&metrics),
        "observe_actor_restarts_total{actor=\"Crashy\"} 3"
    );
    let lines = restart_lines(&logs, "victim-fail");
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| l["reason"] == "lost its database connection"));
    let backoffs: Vec<u64> = lines
        .iter()
        .map(|l| l["backoff_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(backoffs, vec![20, 40, 80]);
    let counts: Vec<u64> = lines
        .iter()
        .map(|l| l["restarts"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 2, 3]);
}

#[actix_rt::test]
async fn a_deliberate_stop_is_not_restarted() {
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let actor = spawn_crashy(&sup, "quitter", Arc::default());
    actor.addr().send(Quit).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!actor.addr().connected());
    assert!(actor.addr().send(Ping).await.is_err());
    assert_eq!(actor.restarts(), 0);
    assert_eq!(
        restarts_counter(&metrics),
        "observe_actor_restarts_total{actor=\"Crashy\"} 0",
        "the kind's series exists, at 0"
    );
}

/// How many `Ping`s the actor's mailbox takes while the actor is busy.
async fn accepted_while_busy(addr: &Addr<Crashy>) -> usize {
    addr.try_send(Sleep(Duration::from_millis(300))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut accepted = 0;
    for _ in 0..40 {
        match addr.try_send(Ping) {
            Ok(()) => accepted += 1,
            Err(SendError::Full(_)) => {}
            Err(SendError::Closed(_)) => panic!("closed"),
        }
    }
    accepted
}

#[actix_rt::test]
async fn a_full_mailbox_refuses_instead_of_growing() {
    let sup = Supervisor::new(Metrics::new().unwrap(), fast_backoff());
    let actor = spawn_crashy(&sup, "busy", Arc::default());
    let accepted = accepted_while_busy(&actor.addr()).await;
    assert_eq!(
        accepted,
        Crashy::MAILBOX,
        "bounded at MAILBOX, not actix's default 16"
    );

    // A restarted incarnation gets the same bound.
    tokio::time::sleep(Duration::from_millis(400)).await;
    actor.addr().send(Fail).await.unwrap();
    assert_eq!(ping_until_up(&actor).await, 2);
    assert_eq!(accepted_while_busy(&actor.addr()).await, Crashy::MAILBOX);
}

#[actix_rt::test]
async fn drain_reaches_every_drainable_actor_and_stops_restarts() {
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let drained = Arc::new(AtomicU32::new(0));
    let a = spawn_crashy(&sup, "drain-a", drained.clone());
    let _b = spawn_crashy(&sup, "drain-b", drained.clone());
    assert!(sup.drain_all(Duration::from_secs(5)).await);
    assert_eq!(drained.load(Ordering::SeqCst), 2);
    // Once stopping, a failure is not restarted: the process is going away.
    a.addr().send(Fail).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.restarts(), 0);
}

#[actix_rt::test]
async fn a_factory_that_panics_on_restart_is_retried_with_backoff() {
    let logs = telemetry::capture();
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let actor: Supervised<Crashy> =
        sup.spawn("flaky-factory", &Arbiter::current(), move |lifeline| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 2 {
                panic!("cannot load state for incarnation 2");
            }
            Crashy {
                incarnation: n,
                lifeline,
                drained: Arc::default(),
            }
        });
    actor.addr().send(Fail).await.unwrap();
    assert_eq!(ping_until_up(&actor).await, 3, "the third build serves");
    assert_eq!(actor.restarts(), 2);
    let reasons: Vec<String> = restart_lines(&logs, "flaky-factory")
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "lost its database connection".to_string(),
            "panic: cannot load state for incarnation 2".to_string()
        ]
    );
}

#[actix_rt::test]
async fn an_old_panic_on_the_thread_is_not_blamed_for_a_later_plain_stop() {
    let logs = telemetry::capture();
    let sup = Supervisor::new(Metrics::new().unwrap(), fast_backoff());
    let actor = spawn_crashy(&sup, "stale-panic", Arc::default());
    // A panic caught elsewhere on this thread leaves its message behind.
    let _ = std::panic::catch_unwind(|| panic!("unrelated, caught elsewhere"));

    actor.addr().send(StopPlain).await.unwrap();
    assert_eq!(ping_until_up(&actor).await, 2);
    let lines = restart_lines(&logs, "stale-panic");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["reason"], "stopped without a reason");
}

#[actix_rt::test]
async fn finished_actors_are_not_drained() {
    let sup = Supervisor::new(Metrics::new().unwrap(), fast_backoff());
    let drained = Arc::new(AtomicU32::new(0));
    let gone = spawn_crashy(&sup, "gone", drained.clone());
    gone.addr().send(Quit).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gone.finished());
    let _stays = spawn_crashy(&sup, "stays", drained.clone());
    assert!(sup.drain_all(Duration::from_secs(5)).await);
    assert_eq!(
        drained.load(Ordering::SeqCst),
        1,
        "only the live actor is drained"
    );
}

/// A message sent through [`Supervised::try_send`], so counted in the mailbox depth.
#[derive(Message)]
#[rtype(result = "()")]
struct Counted;

impl Handler<Counted> for Crashy {
    type Result = ();
    fn handle(&mut self, _: Counted, _: &mut Context<Self>) {
        self.lifeline.took();
    }
}

/// The value of `name{actor="Crashy"}` in the metrics text.
fn crashy_gauge(metrics: &Metrics, name: &str) -> Option<i64> {
    let prefix = format!("{name}{{actor=\"Crashy\"}} ");
    metrics
        .render()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

#[actix_rt::test]
async fn mailbox_depth_counts_what_waits_and_forgets_what_a_dead_incarnation_lost() {
    let metrics = Metrics::new().unwrap();
    let sup = Supervisor::new(metrics.clone(), fast_backoff());
    let actor = spawn_crashy(&sup, "counted", Arc::default());
    let depth = || crashy_gauge(&metrics, "observe_actor_mailbox_depth");
    let capacity = || crashy_gauge(&metrics, "observe_actor_mailbox_capacity");
    assert_eq!(capacity(), Some(Crashy::MAILBOX as i64));

    // Three wait behind a busy handler, then are taken.
    actor
        .addr()
        .try_send(Sleep(Duration::from_millis(300)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        actor.try_send(Counted).unwrap();
    }
    assert_eq!(depth(), Some(3));
    // A refused send is not counted.
    assert!(matches!(
        actor.try_send(Counted),
        Ok(()) | Err(SendError::Full(_))
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth(), Some(0));

    // Two wait behind a panic: they die with the incarnation, and with its count.
    actor
        .addr()
        .try_send(Sleep(Duration::from_millis(200)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    actor.addr().try_send(Boom).unwrap();
    actor.try_send(Counted).unwrap();
    actor.try_send(Counted).unwrap();
    assert_eq!(depth(), Some(2));
    assert_eq!(ping_until_up(&actor).await, 2);
    assert_eq!(depth(), Some(0));
    assert_eq!(
        capacity(),
        Some(Crashy::MAILBOX as i64),
        "a restart keeps one mailbox"
    );

    // Stopped for good: its capacity is gone too.
    actor.addr().send(Quit).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(capacity(), Some(0));
}
