//! A TCP proxy in the test process that delays what the server answers: [`DelayProxy::start`]
//! listens on a free loopback port and forwards each connection to `upstream`; requests go
//! through at once, every chunk of a reply is held for the current delay (in order), so a
//! command reaches Redis and runs there while its reply arrives after the client's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy; its tasks end when it is dropped.
pub struct DelayProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// The delay of replies, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    /// The accept loop (connections' tasks end with their sockets).
    accept: JoinHandle<()>,
}

impl DelayProxy {
    /// Forwards to `upstream` (`127.0.0.1:port`), with no delay until [`DelayProxy::set_delay`].
    pub async fn start(upstream: SocketAddr) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = Arc::clone(&delay);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        forward(client, server, delay).await;
                    }
                });
            }
        });
        DelayProxy { addr, delay_ms, accept }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds every reply chunk read from now on for `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies client → server at once and server → client through a queue whose chunks are each
/// released `delay` after they arrived, so the order and the pipelining of replies are kept.
async fn forward(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let read = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let due = tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
            if tx.send((due, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if client_write.write_all(&chunk).await.is_err() {
            break;
        }
    }
    up.abort();
    read.abort();
}
