//! [`PgProxy`]: a TCP proxy between observe and PostgreSQL that a test can break in the ways a
//! network breaks where no error ever comes: connections stay open while nothing passes any
//! more (a black hole: a dead route, a silent firewall, a frozen peer), and only a timeout
//! notices.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Faults {
    /// Connections numbered below this are black holes.
    holes_below: AtomicU64,
    /// Connections made so far.
    opened: AtomicU64,
}

/// The port of a `postgres://…@host:port/db` URL.
pub fn pg_port(url: &str) -> u16 {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("the database URL names its port")
}

/// See the module documentation. Dropping it closes everything.
pub struct PgProxy {
    pub port: u16,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

impl PgProxy {
    /// A proxy on a free port of 127.0.0.1 to `target` on 127.0.0.1.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let id = shared.opened.fetch_add(1, Ordering::SeqCst);
                let faults = shared.clone();
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (client_r, client_w) = inbound.into_split();
                    let (server_r, server_w) = outbound.into_split();
                    let up = pump(client_r, server_w, id, faults.clone());
                    let down = pump(server_r, client_w, id, faults);
                    tokio::join!(up, down);
                });
            }
        });
        Self { port, faults, task }
    }

    /// `url` (a `postgres://…@host:port/db` URL to the proxy's target) through this proxy.
    pub fn url(&self, url: &str, target: u16) -> String {
        let proxied = url.replacen(&format!(":{target}/"), &format!(":{}/", self.port), 1);
        assert_ne!(proxied, url, "the database URL names its port");
        proxied
    }

    /// Every connection open now goes silent for good: bytes sent either way vanish, nothing
    /// is closed. Connections made later pass normally.
    pub fn black_hole_open_connections(&self) {
        let opened = self.faults.opened.load(Ordering::SeqCst);
        self.faults.holes_below.store(opened, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction of connection `id` until either side closes; once the connection is
/// a black hole, reads go on (the sender sees its bytes leave) and nothing is written.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    faults: Arc<Faults>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if id < faults.holes_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // A black hole never closes: the peer must find out by itself.
    if id < faults.holes_below.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}
