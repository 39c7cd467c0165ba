//! Loopback ports for the servers the tests start.
//!
//! A port found free is free only until someone binds it: another test binary running at the
//! same time may take it before the server does, and the server then exits. So:
//!
//! - a server that must be told its ports (redis-server, its cluster bus) is started on fresh
//!   ones until it binds them ([`on_free_ports`]), or, restarted, on its own again a while
//!   ([`retry_taken`], which serves both);
//! - a server that can pick a port itself (the gateway, Prometheus) is given port 0 and reports
//!   the one it picked in its log, where the test reads it: nothing can take that port first;
//! - a port that must stay unreachable is held without listening ([`ClosedPort`]).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// The machine's own Redis; tests must never touch it, nor bind its port.
pub const RESERVED_PORT: u16 = 6379;

/// How many times [`retry_taken`] starts a server: a port is lost to another process now and
/// then, twenty times in a row only when something else is wrong.
pub const START_ATTEMPTS: usize = 20;

/// How long [`retry_taken`] waits between attempts, for a process that held a port only for a
/// moment (a port probe, a client's connection) to let it go.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A server's start failed because one of its ports was taken before it bound it; what the
/// server logged, which says so.
#[derive(Debug)]
pub struct PortTaken(pub String);

/// `count` distinct loopback ports nothing listens on right now, never [`RESERVED_PORT`]: each
/// is bound on 127.0.0.1:0, and all are released together (so that the kernel cannot hand out
/// one twice) for the caller to bind. Someone else may bind one first; [`on_free_ports`] copes.
fn free_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address of 127.0.0.1:0").port();
        if port != RESERVED_PORT {
            held.push((listener, port));
        }
    }
    held.into_iter().map(|(_, port)| port).collect()
}

/// Starts a server on `count` fresh loopback ports with `start` until it binds them, on at most
/// [`START_ATTEMPTS`] sets of ports; see [`retry_taken`].
pub fn on_free_ports<T>(what: &str, count: usize, start: impl FnMut(&[u16]) -> Result<T, PortTaken>) -> T {
    retry_taken(what, || free_ports(count), start)
}

/// Starts a server with `start` on the ports `ports` gives for each attempt (fresh ones for a
/// new server, its own again for a restarted one, which cannot move) until it binds them, at
/// most [`START_ATTEMPTS`] times; `what` names the server in what is printed.
///
/// `start` returns the running server, or [`PortTaken`] when one of the ports was taken (the
/// server has exited then); any other failure it panics on itself. After the last attempt this
/// panics with the last log.
pub fn retry_taken<T>(
    what: &str,
    mut ports: impl FnMut() -> Vec<u16>,
    mut start: impl FnMut(&[u16]) -> Result<T, PortTaken>,
) -> T {
    let mut last = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let ports = ports();
        match start(&ports) {
            Ok(server) => return server,
            Err(PortTaken(log)) => {
                eprintln!("{what}: one of the ports {ports:?} was taken (attempt {attempt} of {START_ATTEMPTS})");
                last = log;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
    panic!("{what}: a port was taken on each of {START_ATTEMPTS} attempts; last log:\n{last}")
}

/// A loopback port held bound and never listened on, for as long as the value lives:
/// connecting to it is refused, as to a server that is down, and no other process can take it
/// meanwhile (which a port found free and released could not promise).
pub struct ClosedPort {
    /// The bound socket; it never listens, and not sharing the address (no `SO_REUSEADDR`)
    /// keeps every other bind off the port.
    _socket: tokio::net::TcpSocket,
    /// Its port.
    port: u16,
}

impl ClosedPort {
    /// Binds a socket on 127.0.0.1:0 without listening; never [`RESERVED_PORT`].
    pub fn hold() -> ClosedPort {
        loop {
            let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
            socket
                .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("bind 127.0.0.1:0");
            let port = socket.local_addr().expect("local address of 127.0.0.1:0").port();
            if port != RESERVED_PORT {
                return ClosedPort { _socket: socket, port };
            }
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}
