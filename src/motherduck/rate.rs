//! The client-side request rate limit.
//!
//! `governor` does the accounting (GCRA); the clock is tokio's, so waiting
//! goes through `tokio::time::sleep` and a paused test clock controls it.
//!
//! Work has two priorities. Rotations run in the foreground; the orphan
//! sweep runs its calls inside [`background`], and a background request
//! takes a slot only while no foreground request is waiting for one. So a
//! sweep of thousands of policies never delays a due rotation by more than
//! the one request it may already have sent.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

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

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `work` with its MotherDuck requests at background priority: each
/// waits while a foreground request (a rotation's) waits for the rate limit.
pub async fn background<F: Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

fn is_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

/// Admits at most `per_second` requests a second, with a burst of the same
/// size; foreground requests before background ones.
#[derive(Debug)]
pub struct RateGate {
    clock: TokioClock,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    /// Foreground requests waiting for a slot.
    waiting: AtomicUsize,
    /// Signalled when the last waiting foreground request got its slot.
    idle: tokio::sync::Notify,
}

/// Counts a waiting foreground request while it lives.
struct Waiting<'a>(&'a RateGate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl RateGate {
    pub fn new(per_second: NonZeroU32) -> RateGate {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let limiter = RateLimiter::direct_with_clock(Quota::per_second(per_second), clock.clone());
        RateGate {
            clock,
            limiter,
            waiting: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Waits until one more request is allowed; inside [`background`], also
    /// until no foreground request is waiting.
    pub async fn acquire(&self) {
        if is_background() {
            return self.acquire_background().await;
        }
        if self.limiter.check().is_ok() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }

    async fn acquire_background(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a wake-up between the
            // two is not lost.
            idle.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) > 0 {
                idle.await;
                continue;
            }
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
            }
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

    #[tokio::test(start_paused = true)]
    async fn a_foreground_request_goes_before_waiting_background_ones() {
        let gate = std::sync::Arc::new(RateGate::new(NonZeroU32::new(1).unwrap()));
        gate.acquire().await; // the burst of one is spent
        let start = tokio::time::Instant::now();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(background(async move {
                g.acquire().await;
                o.lock()
                    .unwrap()
                    .push((format!("background {i}"), start.elapsed()));
            })));
        }
        tokio::task::yield_now().await;
        let (g, o) = (gate.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            g.acquire().await;
            o.lock()
                .unwrap()
                .push(("foreground".to_owned(), start.elapsed()));
        }));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0].0, "foreground", "{order:?}");
        let secs: Vec<u64> = order
            .iter()
            .map(|(_, at)| at.as_millis() as u64 / 100)
            .collect();
        // One request a second: foreground at 1 s, the background ones at
        // 2, 3 and 4 s.
        assert_eq!(secs, [10, 20, 30, 40], "{order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn background_requests_use_the_rate_when_nothing_else_waits() {
        let gate = RateGate::new(NonZeroU32::new(4).unwrap());
        let start = tokio::time::Instant::now();
        background(async {
            for _ in 0..8 {
                gate.acquire().await;
            }
        })
        .await;
        let spent = start.elapsed();
        assert!(
            spent >= Duration::from_millis(999) && spent <= Duration::from_millis(1010),
            "{spent:?}"
        );
    }
}
