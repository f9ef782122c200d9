//! Supervision inside the running server: an actor that fails is restarted, logged and
//! counted in `/metrics`, and the HTTP side keeps serving throughout.

use std::time::Duration;

use actix::prelude::*;
use observe_actors::{Lifeline, SupervisedActor};

use crate::helpers::{eventually, spawn_app};

struct Fragile {
    _lifeline: Lifeline,
}

impl Actor for Fragile {
    type Context = Context<Self>;
}

impl SupervisedActor for Fragile {
    const KIND: &'static str = "Fragile";
    const MAILBOX: usize = 8;
}

#[derive(Message)]
#[rtype(result = "bool")]
struct Poke {
    explode: bool,
}

impl Handler<Poke> for Fragile {
    type Result = bool;
    fn handle(&mut self, msg: Poke, _: &mut Context<Self>) -> bool {
        if msg.explode {
            panic!("fragile actor gave way");
        }
        true
    }
}

#[actix_web::test]
async fn a_failing_actor_is_restarted_logged_and_counted_while_http_keeps_serving() {
    let app = spawn_app().await;
    let actor = app
        .state
        .supervisor
        .spawn("fragile-1", &Arbiter::current(), |lifeline| Fragile {
            _lifeline: lifeline,
        });
    assert!(actor.addr().send(Poke { explode: false }).await.unwrap());

    assert!(actor.addr().send(Poke { explode: true }).await.is_err());
    assert_eq!(
        app.get_text("/health/live").await.0,
        200,
        "HTTP serves while the actor is down"
    );

    assert!(
        eventually(10, || async {
            matches!(actor.addr().send(Poke { explode: false }).await, Ok(true))
        })
        .await,
        "the actor came back"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("observe_actor_restarts_total{actor=\"Fragile\"} 1"),
        "{metrics}"
    );
    let line = app
        .logs
        .json_lines()
        .into_iter()
        .find(|l| l["message"] == "actor restarted" && l["id"] == "fragile-1")
        .expect("restart log line");
    assert_eq!(line["actor"], "Fragile");
    assert_eq!(line["reason"], "panic: fragile actor gave way");
    assert_eq!(line["restarts"], 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(app.get_json("/health/ready").await.0, 200);
}
