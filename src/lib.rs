//! recgw: an A/B testing gateway for recommendations.
//!
//! The binary is a thin shell over this library; its modules are the architecture:
//! [`experiment`] decides who sees what, [`store`] reads model outputs, [`cache`] keeps lists
//! close, [`gateway`] answers a recommendation request from all three, [`api`] puts it on
//! HTTP, [`feedback`] takes events back and turns them into results, `redis` is the one Redis
//! client all of them share, [`metrics`] counts what happens, [`server`] and [`cli`] start it.

pub mod api;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod experiment;
pub mod feedback;
pub mod gateway;
pub mod metrics;
mod redis;
pub mod report;
pub mod server;
pub mod store;
