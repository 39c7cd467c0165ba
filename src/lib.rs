//! recgw: an A/B testing gateway for recommendations.
//!
//! The binary is a thin shell over this library; its modules are the architecture:
//! [`experiment`] decides who sees what, [`store`] reads model outputs, [`gateway`] answers a
//! recommendation request from both, and [`api`] puts it on HTTP.

pub mod api;
pub mod cli;
pub mod config;
pub mod experiment;
pub mod gateway;
pub mod server;
pub mod store;
