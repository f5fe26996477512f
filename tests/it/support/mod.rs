//! Shared helpers for the integration tests.

pub mod observability;
pub mod services;
