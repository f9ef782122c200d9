//! A graceful stop (what SIGTERM triggers) lets in-flight requests finish, refuses new
//! connections, and drains every drainable actor before the server reports itself stopped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use awc::http::Method;
use observe_actors::{Drain, Lifeline, SupervisedActor};

use crate::helpers::{send, spawn_app_with, test_routes};

/// Stands in for a buffering actor: counts the drains it is asked for.
struct Buffer {
    _lifeline: Lifeline,
    drains: Arc<AtomicU32>,
}

impl Actor for Buffer {
    type Context = Context<Self>;
}

impl SupervisedActor for Buffer {
    const KIND: &'static str = "Buffer";
    const MAILBOX: usize = 8;
}

impl Handler<Drain> for Buffer {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        // Writing out takes a moment; the stop must wait for it.
        let drains = self.drains.clone();
        Box::pin(actix::fut::wrap_future(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drains.fetch_add(1, Ordering::SeqCst);
        }))
    }
}

#[actix_web::test]
async fn a_graceful_stop_finishes_in_flight_requests_then_drains_actors() {
    let app = spawn_app_with(|_| {}, Some(test_routes())).await;
    let drains = Arc::new(AtomicU32::new(0));
    let counter = drains.clone();
    app.state
        .supervisor
        .spawn_drainable("buffer-1", &Arbiter::current(), move |lifeline| Buffer {
            _lifeline: lifeline,
            drains: counter.clone(),
        });

    let slow = actix_web::rt::spawn(send(app.req(Method::GET, "/__test/slow"), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = actix_web::rt::spawn({
        let server = app.server.clone();
        async move { server.stop(true).await }
    });

    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finished");
    assert_eq!(reply.text, "slow done");
    stop.await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), app.stopped)
        .await
        .expect("stopped within the timeout")
        .unwrap()
        .unwrap();
    assert_eq!(
        drains.load(Ordering::SeqCst),
        1,
        "the actor was drained before the stop returned"
    );
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no new connections"
    );
    assert!(app
        .logs
        .json_lines()
        .iter()
        .any(|l| l["message"] == "actors drained" && l["actors"].as_u64() >= Some(1)));
}
