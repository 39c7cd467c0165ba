//! recgw: an A/B testing gateway for recommendations.
//!
//! The binary is a thin shell over this library; its modules are the architecture:
//! [`experiment`] decides who sees what, [`store`] reads model outputs, [`gateway`] answers a
//! recommendation request from both, and [`api`] puts it on HTTP.

pub mod experiment;
pub mod store;
pub mod config;
pub mod gateway;
pub mod api;
pub mod server;
pub mod cli;
