//! motherduck-rotator: rotates MotherDuck service-account tokens.
//!
//! See `ARCHITECTURE.md` at the repository root for the bird's-eye view and
//! the codemap.

pub mod alerts;
pub mod build_info;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod motherduck;
pub mod notify;
pub mod reload;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod simulator;
pub mod stores;
pub mod verify;
