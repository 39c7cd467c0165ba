//! Helpers shared by the integration tests, included by every test file the same way, with
//! `mod common;`.
//!
//! Each file in `tests/` is its own crate and uses only part of these helpers, so unused ones
//! must not warn.
#![allow(dead_code)]

pub mod assignment;
pub mod cli;
pub mod edits;
pub mod events;
pub mod examples;
pub mod gateway;
pub mod openapi;
pub mod process;
pub mod promtool;
pub mod proxy;
pub mod redis;
pub mod rng;
pub mod spark;
pub mod stats;
pub mod traffic;

use std::net::TcpListener;

/// The machine's own Redis; tests must never touch it, nor bind its port.
pub const RESERVED_PORT: u16 = 6379;

/// A loopback port nothing listens on right now (bound on 127.0.0.1:0, then released for the
/// caller to bind), never [`RESERVED_PORT`].
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if port != RESERVED_PORT {
            return port;
        }
    }
}
