//! recgw: an A/B testing gateway for recommendations.
//!
//! The binary is a thin shell over this library; its modules are the architecture:
//! [`experiment`] decides who sees what, [`store`] reads model outputs, [`cache`] keeps lists
//! close, [`gateway`] answers a recommendation request from all three, [`api`] puts it on
//! HTTP, [`metrics`] counts what happens, [`server`] and [`cli`] start it.

pub mod api;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod events;
pub mod experiment;
pub mod gateway;
pub mod metrics;
pub mod report;
pub mod results;
pub mod server;
pub mod stats;
pub mod store;
pub mod tally;
pub mod tracking;
