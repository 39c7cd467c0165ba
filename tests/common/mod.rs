//! Helpers shared by the integration tests, included by every test file the same way, with
//! `mod common;`.
//!
//! Each file in `tests/` is its own crate and uses only part of these helpers, so unused ones
//! must not warn.
#![allow(dead_code)]

pub mod assignment;
pub mod browser;
pub mod cli;
pub mod edits;
pub mod events;
pub mod examples;
pub mod gateway;
pub mod openapi;
pub mod page;
pub mod ports;
pub mod process;
pub mod promtool;
pub mod proxy;
pub mod redis;
pub mod rng;
pub mod serve;
pub mod spark;
pub mod stats;
pub mod traffic;
