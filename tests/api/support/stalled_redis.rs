//! [`StalledRedis`]: a Redis that is up but stuck. It speaks enough RESP to accept a client
//! (connection setup, `PING`), so a pool's health check passes, and never answers a script
//! (`EVALSHA`, `EVAL`, `SCRIPT`): what a Redis busy with something slow, or a network path that
//! dies between the health check and the command, looks like to the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// See the module documentation. Dropping it closes everything.
pub struct StalledRedis {
    pub port: u16,
    scripts: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl StalledRedis {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let scripts = Arc::new(AtomicU64::new(0));
        let seen = scripts.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                connections.spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some((command, used)) = parse_command(&pending) {
                            pending.drain(..used);
                            let reply: &[u8] = match command.as_str() {
                                "EVALSHA" | "EVAL" | "SCRIPT" | "FCALL" => {
                                    seen.fetch_add(1, Ordering::SeqCst);
                                    // Stuck: keep the connection open, answer nothing more.
                                    std::future::pending::<()>().await;
                                    return;
                                }
                                "PING" => b"+PONG\r\n",
                                _ => b"+OK\r\n",
                            };
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            port,
            scripts,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Scripts that reached it (and were never answered).
    pub fn scripts_received(&self) -> u64 {
        self.scripts.load(Ordering::SeqCst)
    }
}

impl Drop for StalledRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The upper-cased name of the first whole RESP command in `bytes` (`*N\r\n$len\r\narg\r\n…`),
/// and how many bytes it took; `None` until a whole one has arrived.
fn parse_command(bytes: &[u8]) -> Option<(String, usize)> {
    fn line(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&bytes[at..end], end + 2))
    }
    let (header, mut at) = line(bytes, 0)?;
    let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut name = None;
    for _ in 0..count {
        let (len, next) = line(bytes, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if bytes.len() < next + len + 2 {
            return None;
        }
        if name.is_none() {
            name = Some(String::from_utf8_lossy(&bytes[next..next + len]).to_uppercase());
        }
        at = next + len + 2;
    }
    Some((name.unwrap_or_default(), at))
}
