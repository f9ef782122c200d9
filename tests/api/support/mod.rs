//! Fakes the tests share: stand-ins for the network between observe and what it talks to;
//! and the read side's tenant ([`reads::Reader`]), which reads back what it ingested.

pub mod binary;
pub mod otlp;
pub mod proxy;
pub mod reads;
pub mod squad;
pub mod stalled_redis;

/// Serves an app factory on a free loopback port with one worker, in this test's runtime:
/// `(base URL, handle that stops it)`. The fakes of outside services start this way. (A
/// macro: `HttpServer::new`'s bounds name crates the tests do not depend on.)
macro_rules! serve {
    ($what:expr, $factory:expr) => {{
        let server = actix_web::HttpServer::new($factory)
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("bind {}: {e}", $what));
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        (format!("http://127.0.0.1:{port}"), handle)
    }};
}
pub(crate) use serve;
