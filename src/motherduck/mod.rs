//! The MotherDuck REST API: typed client, request/response types, errors.
//!
//! The API is described in `MOTHERDUCK_API.md` of the design notes; the
//! [`crate::simulator`] implements the same routes for tests and the demo.

mod client;
mod error;
mod rate;
pub use rate::background;
mod types;

pub use client::{
    Client, ClientBuildError, ClientConfig, Removal, RetrySleep, TokenCheck, is_loopback,
    retry_after, validate_base_url,
};
pub use error::{ApiError, Endpoint, Issue};
pub use types::*;
