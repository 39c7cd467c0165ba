//! Helpers shared by the integration tests.
//!
//! Each file in `tests/` is its own crate and uses only part of these helpers, so unused ones
//! must not warn.
#![allow(dead_code)]

pub mod spark;
