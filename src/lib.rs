//! recgw: an A/B testing gateway for recommendations.
//!
//! The binary is a thin shell over this library; its modules are the architecture
//! (ARCHITECTURE.md §1):
//! - [`config`] reads and validates the settings;
//! - [`experiment`] decides who sees what;
//! - [`store`] reads model outputs and builds their serving snapshots;
//! - [`cache`] keeps lists close: a local tier and a Redis tier;
//! - [`gateway`] answers a recommendation request from all three;
//! - [`api`] puts it on HTTP, behind [`auth`]'s API keys;
//! - [`feedback`] takes events back and counts them exactly, and `analysis` turns the counts
//!   into results;
//! - `redis` is the one Redis client all of them share, `eviction` holds the counts while
//!   their Redis may evict them, and `redact` keeps the credentials of its URLs (and of any
//!   other URL) out of what is printed;
//! - [`metrics`] counts what happens, and `logs` writes what was served and clicked as
//!   Parquet tables for the warehouse;
//! - [`synthetic`] writes demo and benchmark model outputs in Spark's layout;
//! - [`server`] starts it, [`cli`] and [`report`] are the subcommands.

mod analysis;
pub mod api;
pub mod auth;
pub mod cache;
mod calendar;
pub mod cli;
pub mod config;
pub mod experiment;
pub mod feedback;
pub mod gateway;
mod keys;
mod logs;
pub mod metrics;
mod redact;
mod redis;
pub mod report;
pub mod server;
pub mod store;
pub mod synthetic;
