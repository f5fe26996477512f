//! The `http` action: one request to the consumer (a reload endpoint),
//! passing when the status is one of the expected ones. Built as an
//! [`HttpProbe`]: the same URL, header and secret rules, sent once.

use super::{ActionError, ReloadContext, verify_context};
use crate::verify::HttpProbe;

pub(super) async fn run(h: &HttpProbe, ctx: &ReloadContext) -> Result<(), ActionError> {
    h.attempt(&verify_context(ctx)).await.map_err(|r| {
        ActionError::new(
            r.code(),
            format!("request `{} {}` {r}", h.method(), h.label()),
        )
    })
}
