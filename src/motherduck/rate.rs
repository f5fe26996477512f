//! The client-side request rate limit.
//!
//! `governor` does the accounting (GCRA); the clock is tokio's, so waiting
//! goes through `tokio::time::sleep` and a paused test clock controls it.

use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Nanoseconds since creation, measured on tokio's clock.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

/// Admits at most `per_second` requests a second, with a burst of the same
/// size.
#[derive(Debug)]
pub struct RateGate {
    clock: TokioClock,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
}

impl RateGate {
    pub fn new(per_second: NonZeroU32) -> RateGate {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let limiter = RateLimiter::direct_with_clock(Quota::per_second(per_second), clock.clone());
        RateGate { clock, limiter }
    }

    /// Waits until one more request is allowed.
    pub async fn acquire(&self) {
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn admits_a_burst_then_spaces_requests() {
        let gate = RateGate::new(NonZeroU32::new(4).unwrap());
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            gate.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst passes at once");
        for _ in 0..4 {
            gate.acquire().await;
        }
        // Four more at 4/s take one second of (paused, auto-advanced) time.
        let spent = start.elapsed();
        assert!(
            spent >= Duration::from_millis(999) && spent <= Duration::from_millis(1010),
            "{spent:?}"
        );
    }
}
