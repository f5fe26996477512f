//! Sleeping until a wall-clock instant.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// Sleeps until the wall clock read through `now` reaches `deadline`.
///
/// Tokio's timers run on the monotonic clock, which stops while the machine
/// is suspended and ignores changes to the wall clock, while the schedule is
/// in wall-clock time. So this sleeps at most `max_chunk` at a time and
/// re-reads the wall clock after each chunk: after a resume or a clock jump
/// it returns, or adjusts, within one chunk. A `max_chunk` of zero is taken
/// as one millisecond.
///
/// Returns `true` when the deadline is reached and `false` as soon as
/// `cancel` fires.
pub async fn sleep_until_wall(
    deadline: DateTime<Utc>,
    now: impl Fn() -> DateTime<Utc>,
    max_chunk: Duration,
    cancel: &CancellationToken,
) -> bool {
    let max_chunk = max_chunk.max(Duration::from_millis(1));
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        // A deadline in the past fails the conversion, which is "arrived".
        let Ok(remaining) = (deadline - now()).to_std() else {
            return true;
        };
        if remaining.is_zero() {
            return true;
        }
        let chunk = remaining.min(max_chunk);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(chunk) => {}
        }
    }
}
