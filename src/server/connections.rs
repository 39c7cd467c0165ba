//! The HTTP connections: accepted here and served by hyper directly, because `poem::Server`
//! sets no deadline on a request's headers and no bound on connections, and lets an HTTP/2
//! connection open any number of streams. Each of those lets slow or greedy clients hold
//! sockets and buffers without end; here each is a setting (`server.header_read_timeout`,
//! `server.max_connections`, `server.http2_max_concurrent_streams`).

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::Endpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;

use crate::api::JsonUriTooLong;

/// How long the accept loop pauses after a failed accept (out of descriptors, most often):
/// trying again at once would spin, and a connection may have closed meanwhile.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// What hyper sets per connection, and how many connections are served at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `server.header_read_timeout`: how long an HTTP/1 request's headers may take to arrive.
    pub(crate) header_read_timeout: Duration,
    /// `server.idle_timeout`: how long a read or a write may wait (see [`serve_one`]).
    pub(crate) idle_timeout: Duration,
    /// `server.max_connections`: connections served at once; more are refused.
    pub(crate) max_connections: usize,
    /// `server.http2_max_concurrent_streams`: requests in flight on one HTTP/2 connection.
    pub(crate) http2_max_concurrent_streams: u32,
}

/// Serves `app` on the connections `listener` accepts until `shutdown` resolves; then accepts
/// no more, lets the requests under way finish for up to `grace`, and closes what is left.
/// Past `limits.max_connections` a new connection is told 503 and closed, and counted in
/// `refused`.
pub(crate) async fn serve<E>(
    listener: TcpListener,
    app: E,
    limits: Limits,
    refused: IntCounter,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    E: Endpoint + 'static,
{
    let local = listener.local_addr()?;
    let app = Arc::new(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // poem's own settings for the rest: 20 streams reset before accepted end the connection
    // (the "rapid reset" attack), and request headers of 16 KiB at most.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(20)
        .max_header_list_size(16 * 1024);
    let builder = Arc::new(builder);
    let refusal = refusal();
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.max_connections {
            refused.inc();
            refuse(stream, &refusal);
            continue;
        }
        connections.spawn(serve_one(
            stream,
            (local, remote),
            Arc::clone(&app),
            Arc::clone(&builder),
            limits.idle_timeout,
            draining.clone(),
        ));
    }
    drop(listener);
    // Connections finish the request under way and close; an idle one closes at once.
    let _ = drain.send(true);
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still open after server.shutdown_grace are closed"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// Serves one connection until it closes, or until `draining` turns true: then the request
/// under way is answered and the connection closed.
///
/// Every read and write waits `idle_timeout` at most, after which hyper drops the connection:
/// a client that stops reading its answer, or idles between keep-alive requests, cannot hold
/// its socket forever. A client trickling its headers resets that clock at every byte, which
/// hyper's header deadline bounds instead. The socket also gets hyper's own 414 answers
/// rewritten with a JSON body ([`JsonUriTooLong`]).
async fn serve_one<E>(
    stream: TcpStream,
    (local, remote): (SocketAddr, SocketAddr),
    app: Arc<E>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    mut draining: watch::Receiver<bool>,
) where
    E: Endpoint + 'static,
{
    let mut io = TimeoutStream::new(JsonUriTooLong::new(stream));
    io.set_read_timeout(Some(idle_timeout));
    io.set_write_timeout(Some(idle_timeout));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let app = Arc::clone(&app);
        async move {
            let request = (
                request,
                LocalAddr(local.into()),
                RemoteAddr(remote.into()),
                Scheme::HTTP,
            );
            let response = app.get_response(request.into()).await;
            Ok::<hyper::Response<_>, Infallible>(response.into())
        }
    });
    let connection = builder.serve_connection(TokioIo::new(Box::pin(io)), service);
    tokio::pin!(connection);
    // The guard `wait_for` returns must not live across the await below.
    let drained = async {
        let _ = draining.wait_for(|draining| *draining).await;
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = drained => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        // Clients hanging up, timeouts and malformed requests: the client's affair.
        tracing::debug!(remote = %remote, error = %e, "connection ended");
    }
}

/// The answer of a connection past `server.max_connections`: the JSON error every failure gets,
/// and a hint to come back shortly.
fn refusal() -> Vec<u8> {
    let body = serde_json::json!({
        "error": "too_many_connections",
        "message": "the gateway is serving as many connections as it takes (server.max_connections); try again shortly",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `refusal` to a connection the gateway will not serve, if its socket takes it at once
/// (a fresh socket's buffer does), and closes it. A client that already sent its request may
/// see the connection reset instead: closing a socket with unread bytes resets it, and reading
/// them is what the bound is there to avoid.
fn refuse(stream: TcpStream, refusal: &[u8]) {
    if let Ok(mut socket) = stream.into_std() {
        let _ = socket.write(refusal);
    }
}
