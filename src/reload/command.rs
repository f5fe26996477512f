//! The `command` action: a program run once, with the command hook's
//! environment rules (see `verify::command`): a clean environment, the
//! rotation's ids as `MDR_*` variables, the token as `MOTHERDUCK_TOKEN`
//! only with `pass_token`, and the process group killed at the timeout.
//! Reload commands also get `MDR_RELOAD_CAUSE` (`promote` or `rollback`).

use super::{ActionError, ReloadContext, verify_context};
use crate::verify::CommandHook;

/// How much of a command line labels it in logs and errors.
const LABEL_CHARS: usize = 100;

/// The program and its arguments, as configured, cut after
/// [`LABEL_CHARS`] characters (an inline script can be long).
pub(super) fn label(c: &CommandHook) -> String {
    let mut s = c.program().display().to_string();
    for a in c.args() {
        s.push(' ');
        s.push_str(a);
    }
    if s.chars().count() > LABEL_CHARS {
        s = s.chars().take(LABEL_CHARS).collect::<String>() + "…";
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
