//! The `command` action: a program run once, with the command hook's
//! environment rules (see `verify::command`): a clean environment, the
//! rotation's ids as `MDR_*` variables, the token as `MOTHERDUCK_TOKEN`
//! only with `pass_token`, and the process group killed at the timeout.
//! Reload commands also get `MDR_RELOAD_CAUSE` (`promote` or `rollback`).

use super::{ActionError, ReloadContext, verify_context};
use crate::verify::CommandHook;

/// The program and its arguments, as configured.
pub(super) fn label(c: &CommandHook) -> String {
    let mut s = c.program().display().to_string();
    for a in c.args() {
        s.push(' ');
        s.push_str(a);
    }
    s
}

pub(super) async fn run(
    c: &CommandHook,
    ctx: &ReloadContext,
    scrub_env: &[String],
) -> Result<(), ActionError> {
    c.attempt_with(
        &verify_context(ctx),
        scrub_env,
        &[("MDR_RELOAD_CAUSE", ctx.cause.as_str())],
    )
    .await
    .map_err(|r| ActionError::new(r.code(), format!("command `{}` {r}", label(c))))
}
