//! Shared helpers for the integration tests.

pub mod child_logs;
pub mod fault_proxy;
pub mod log_lines;
pub mod observability;
pub mod services;
