//! HTTP input no client should send (issue 8): huge headers, huge and deeply nested JSON,
//! invalid UTF-8 in paths, clients that stall or trickle in their headers or their body, more
//! connections than the gateway serves at once, and HTTP/2 connections. Each gets a bounded,
//! documented answer (README, "Failure behaviour"), the gateway keeps serving, and once the
//! connections are gone the process holds no more descriptors than before.
//!
//! Requests are written byte by byte on raw TCP sockets, since an HTTP client library would
//! refuse to send most of them.

mod common;

use std::time::{Duration, Instant};

use common::gateway;
use common::gateway::{TestGateway, demo_settings};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `server.request_timeout` and `server.idle_timeout` of these tests: short, so stalls end fast.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

async fn gateway() -> TestGateway {
    let mut settings = demo_settings();
    settings.server.request_timeout = REQUEST_TIMEOUT;
    settings.server.idle_timeout = IDLE_TIMEOUT;
    TestGateway::launch_ready(&settings).await
}

/// One HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    /// Asserts the `{error, message}` JSON body the gateway gives every error, with `code`.
    fn assert_json_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let body: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        assert_eq!(body["error"], code, "{self:?}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
    }
}

/// Connects to the gateway.
async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.expect("connect")
}

/// Reads one answer (headers, then a `Content-Length` body) within 10 s.
async fn read_answer(socket: &mut TcpStream) -> Answer {
    read_answer_or_close(socket)
        .await
        .expect("the connection closed before a whole answer")
}

/// Reads one answer within 10 s, or `None` when the connection closes (or is reset) before a
/// whole one came.
async fn read_answer_or_close(socket: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                    return Some(Answer {
                        status,
                        headers: head,
                        body,
                    });
                }
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer or a close within 10 s")
}

/// Whether the server closes `socket` within `within` (reads hit end of file or a reset).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1024];
    let started = Instant::now();
    while started.elapsed() < within {
        match tokio::time::timeout(within - started.elapsed(), socket.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(gw: &TestGateway, request: &[u8]) -> (Answer, TcpStream) {
    let mut socket = connect(gw).await;
    socket.write_all(request).await.expect("write");
    (read_answer(&mut socket).await, socket)
}

/// Open descriptors of this process (the gateway runs in it).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// The gateway still answers a plain request.
async fn still_serves(gw: &TestGateway) {
    let (answer, _) = exchange(
        gw,
        b"GET /recommendations/42?placement=home HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_get_431_json_then_hyper_431_past_its_buffer() {
    let gw = gateway().await;
    // Past the gateway's 16 KiB: its own JSON error.
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (answer, _) = exchange(&gw, request.as_bytes()).await;
    answer.assert_json_error(431, "headers_too_large");
    assert!(answer.body.contains("16384"), "{answer:?}");
    // Under it: served.
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8_000)
    );
    assert_eq!(exchange(&gw, request.as_bytes()).await.0.status, 200);
    // Past hyper's read buffer and past its header count: refused before the gateway sees it.
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    for request in [huge, many] {
        let mut socket = connect(&gw).await;
        // The server may close before taking all of it.
        let _ = socket.write_all(request.as_bytes()).await;
        let answer = read_answer(&mut socket).await;
        assert_eq!(answer.status, 431, "{answer:?}");
        assert!(closed_within(&mut socket, Duration::from_secs(5)).await, "closed after");
    }
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_path_is_a_400() {
    let gw = gateway().await;
    // Percent-encoded: reaches the gateway, which refuses the user id.
    for path in [
        "/recommendations/%FF%FE",
        "/recommendations/a%C3",
        "/experiments/%80/assignment/u",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        let (answer, _) = exchange(&gw, request.as_bytes()).await;
        assert!(
            answer.status == 400 || answer.status == 404,
            "{path}: a client error: {answer:?}"
        );
        let body: Value = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {answer:?}"));
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{path}: {answer:?}"
        );
    }
    // Raw bytes in the request line: refused by the HTTP parser, which closes the connection.
    let mut socket = connect(&gw).await;
    socket
        .write_all(b"GET /recommendations/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut socket).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(closed_within(&mut socket, Duration::from_secs(5)).await);
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_or_huge_json_is_refused_without_reading_it_whole() {
    let gw = gateway().await;
    let post = |body: &[u8]| {
        let mut request = format!(
            "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    // 100,000 levels: the JSON parser's depth limit answers, not the stack.
    for deep in [
        format!("{{\"events\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)),
    ] {
        let (answer, _) = exchange(&gw, &post(deep.as_bytes())).await;
        answer.assert_json_error(400, "bad_request");
    }
    // Announced larger than 1 MiB: refused before a byte of the body is read.
    let started = Instant::now();
    let (answer, mut socket) = exchange(
        &gw,
        b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
    )
    .await;
    answer.assert_json_error(413, "payload_too_large");
    assert!(started.elapsed() < REQUEST_TIMEOUT, "at once: {:?}", started.elapsed());
    assert!(
        closed_within(&mut socket, Duration::from_secs(5)).await,
        "the unread body ends the connection"
    );
    // Chunked, so its length is not announced: refused as such.
    let (answer, _) = exchange(
        &gw,
        b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    answer.assert_json_error(411, "length_required");
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_get_bounded_answers_and_leave_nothing_open() {
    let gw = gateway().await;
    still_serves(&gw).await;
    let before = open_descriptors();

    // A body that never finishes: 408 after the request timeout, then the connection closes.
    let mut stalled_bodies = Vec::new();
    for _ in 0..20 {
        let mut socket = connect(&gw).await;
        socket
            .write_all(
                b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"events\":[",
            )
            .await
            .expect("write");
        stalled_bodies.push(socket);
    }
    // Headers that never finish, and a connection that never sends a thing.
    let mut stalled_headers = Vec::new();
    for i in 0..20 {
        let mut socket = connect(&gw).await;
        if i % 2 == 0 {
            socket
                .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .await
                .expect("write");
        }
        stalled_headers.push(socket);
    }
    // Meanwhile everyone else is served.
    still_serves(&gw).await;

    let started = Instant::now();
    for socket in &mut stalled_bodies {
        let answer = read_answer(socket).await;
        answer.assert_json_error(408, "request_timeout");
        assert!(
            answer.headers.to_ascii_lowercase().contains("x-request-id"),
            "{answer:?}"
        );
        assert!(
            closed_within(socket, Duration::from_secs(5)).await,
            "closed after the 408"
        );
    }
    let answered = started.elapsed();
    for socket in &mut stalled_headers {
        assert!(
            closed_within(socket, IDLE_TIMEOUT * 5).await,
            "a silent connection is closed after the idle timeout"
        );
    }
    let closed = started.elapsed();
    drop(stalled_bodies);
    drop(stalled_headers);

    // The server's ends of all 40 sockets are gone too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_descriptors() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open_descriptors() <= before,
        "descriptors: {before} before, {} after",
        open_descriptors()
    );
    still_serves(&gw).await;
    let metrics = gw.metrics().await;
    assert_eq!(
        gateway::sample(
            &metrics,
            "errors_total",
            &[
                ("endpoint", "events"),
                ("placement", "none"),
                ("experiment", "none"),
                ("arm", "none"),
                ("kind", "request_timeout")
            ]
        ),
        20.0,
        "{metrics}"
    );
    eprintln!("408s within {answered:?}, silent connections closed within {closed:?}");
}

/// `server.header_read_timeout` of the slow-client tests: short, so the deadline comes fast.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// Settings of the slow-client tests: a short header deadline and request timeout, and an idle
/// timeout well past the header deadline, so that what closes a connection is told apart.
fn slow_client_settings() -> recgw::config::Settings {
    let mut settings = demo_settings();
    settings.server.request_timeout = REQUEST_TIMEOUT;
    settings.server.idle_timeout = Duration::from_secs(3);
    settings.server.header_read_timeout = HEADER_TIMEOUT;
    settings
}

/// A client sending one header byte at a time, each well within the idle timeout, is cut at
/// the header deadline: the idle timeout alone restarts at every byte, and would let it hold
/// its connection (and its buffers) for as long as it keeps trickling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_cut_at_the_header_deadline() {
    let gw = TestGateway::launch_ready(&slow_client_settings()).await;
    let (mut reader, mut writer) = connect(&gw).await.into_split();
    writer
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        // Until the server's close makes a write fail, or long past every timeout.
        while started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut byte = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match reader.read(&mut byte).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    let closed = closed.expect("the trickling connection is closed");
    assert!(
        closed >= HEADER_TIMEOUT.mul_f64(0.9) && closed < Duration::from_secs(3),
        "closed after {closed:?}: the header deadline is {HEADER_TIMEOUT:?}, the idle timeout 3 s"
    );
    still_serves(&gw).await;
}

/// The answer to `GET /health` on a raw connection, or `None` when it was closed (or reset)
/// first.
async fn health_on(socket: &mut TcpStream) -> Option<Answer> {
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    read_answer_or_close(socket).await
}

/// Past `server.max_connections` a connection is refused at once — told 503 JSON when it has
/// sent nothing yet, closed either way — and counted, exactly, in
/// `http_connections_refused_total`; the connections being served are served on, and once
/// some close, new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_refused_and_counted() {
    const MAX: usize = 8;
    let mut settings = slow_client_settings();
    settings.server.max_connections = MAX;
    settings.server.header_read_timeout = Duration::from_secs(30);
    settings.server.idle_timeout = Duration::from_secs(30);
    let gw = TestGateway::launch_ready(&settings).await;
    let before = open_descriptors();

    // In order, one at a time: the first ones fill what the harness's own pooled connection
    // left, the others are refused.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..3 * MAX {
        let mut socket = connect(&gw).await;
        match health_on(&mut socket).await {
            Some(answer) if answer.status == 200 => served.push(socket),
            Some(answer) => {
                answer.assert_json_error(503, "too_many_connections");
                refused += 1;
            }
            None => refused += 1,
        }
    }
    assert!(
        (2 * MAX..3 * MAX).contains(&refused) && served.len() + refused == 3 * MAX,
        "{} served, {refused} refused",
        served.len()
    );
    // A connection that sends nothing reads why.
    let mut silent = connect(&gw).await;
    let answer = read_answer_or_close(&mut silent).await.expect("an answer");
    answer.assert_json_error(503, "too_many_connections");
    assert!(
        answer.headers.to_ascii_lowercase().contains("retry-after"),
        "{answer:?}"
    );
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    refused += 1;

    // The connections being served still are: the harness's, and those of the loop.
    let at_the_bound = gw.metrics().await;
    for socket in &mut served {
        assert_eq!(health_on(socket).await.map(|a| a.status), Some(200));
    }
    // Once they close, new connections are served again (counting any refused meanwhile,
    // before the gateway saw the others close).
    drop(served);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut socket = connect(&gw).await;
        match health_on(&mut socket).await {
            Some(answer) if answer.status == 200 => break,
            _ if Instant::now() < deadline => refused += 1,
            other => panic!("no connection served after the others closed: {other:?}"),
        }
    }
    let counted = gateway::sample(&gw.metrics().await, "http_connections_refused_total", &[]);
    assert_eq!(counted, refused as f64, "at the bound:\n{at_the_bound}");
    // Refused connections leave no descriptor behind (the harness may have opened one more
    // pooled connection meanwhile: two sockets of this process).
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_descriptors() > before + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open_descriptors() <= before + 2,
        "descriptors: {before} before, {} after",
        open_descriptors()
    );
}

/// An HTTP/2 connection (cleartext, with prior knowledge) is told at once how many requests
/// it may have in flight: `server.http2_max_concurrent_streams`, which the HTTP/2 layer then
/// enforces by refusing the streams past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_told_their_bound_on_streams() {
    let mut settings = slow_client_settings();
    settings.server.http2_max_concurrent_streams = 7;
    let gw = TestGateway::launch_ready(&settings).await;
    let mut socket = connect(&gw).await;
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let settings = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await.expect("a frame");
            let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            socket.read_exact(&mut payload).await.expect("its payload");
            // The server's SETTINGS, not the acknowledgement of ours (flag 1).
            if header[3] == 4 && header[4] & 1 == 0 {
                return payload;
            }
        }
    })
    .await
    .expect("the server's settings within 10 s");
    let max_streams = settings
        .chunks_exact(6)
        .find(|entry| entry[..2] == [0, 3])
        .map(|entry| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS in {settings:?}");
}
