//! The client-side request rate limit.
//!
//! `governor` does the accounting (GCRA); the clock is tokio's, so waiting
//! goes through `tokio::time::sleep` and a paused test clock controls it.
//!
//! The configured rate is a ceiling. The gate starts at [`START_RATE`] (or
//! the ceiling, if lower) and adapts, as TCP does: while requests queue at
//! the gate and the server does not push back, the rate doubles every
//! quarter second up to the ceiling; a 429 halves it (at most once a
//! second), after which it grows by an eighth every quarter second. So the
//! defaults are safe against a real server and still reach a high ceiling
//! within a second.
//!
//! Work has two priorities. Rotations run in the foreground; the orphan
//! sweep runs its calls inside [`background`], and a background request
//! takes a slot only while no foreground request is waiting for one. So a
//! sweep of thousands of policies never delays a due rotation by more than
//! the one request it may already have sent.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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

/// The rate a gate starts at, in requests a second, when its ceiling is
/// higher.
pub const START_RATE: u32 = 10;

/// How often the rate may grow: a round trip or a few, as TCP's slow
/// start grows once per round trip.
const GROW_ROUND: Duration = Duration::from_millis(250);

/// How often the rate may shrink: the 429s of requests already in flight
/// when the first one came answer for the same overload.
const SHRINK_ROUND: Duration = Duration::from_secs(1);

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// Admits requests at an adaptive rate no higher than its ceiling, with a
/// burst of one second's worth; foreground requests before background ones.
#[derive(Debug)]
pub struct RateGate {
    clock: TokioClock,
    ceiling: u32,
    adapt: std::sync::Mutex<Adapt>,
    /// Whether a request had to wait for a slot since the rate last changed:
    /// only then is a higher rate of any use.
    limited: AtomicBool,
    /// Foreground requests waiting for a slot.
    waiting: AtomicUsize,
    /// Signalled when the last waiting foreground request got its slot.
    idle: tokio::sync::Notify,
}

#[derive(Debug)]
struct Adapt {
    rate: u32,
    limiter: Arc<Limiter>,
    /// Doubling until the first 429; growing by an eighth after it.
    slow_start: bool,
    changed: tokio::time::Instant,
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
    /// A gate whose rate never exceeds `ceiling` requests a second.
    pub fn new(ceiling: NonZeroU32) -> RateGate {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let rate = ceiling.get().min(START_RATE);
        RateGate {
            adapt: std::sync::Mutex::new(Adapt {
                rate,
                limiter: Arc::new(limiter(rate, &clock)),
                slow_start: true,
                changed: tokio::time::Instant::now(),
            }),
            clock,
            ceiling: ceiling.get(),
            limited: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// The rate now, in requests a second.
    pub fn rate(&self) -> u32 {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Adapt> {
        self.adapt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn limiter(&self) -> Arc<Limiter> {
        self.lock().limiter.clone()
    }

    /// A request was answered without push-back: after a round in which
    /// requests queued, the rate grows.
    pub fn answered(&self) {
        let mut a = self.lock();
        if a.rate >= self.ceiling || a.changed.elapsed() < GROW_ROUND {
            return;
        }
        if !self.limited.swap(false, Ordering::AcqRel) {
            return;
        }
        let grown = if a.slow_start {
            a.rate.saturating_mul(2)
        } else {
            a.rate.saturating_add((a.rate / 8).max(1))
        };
        self.set(&mut a, grown.min(self.ceiling));
    }

    /// The server answered 429: the rate halves, once a round.
    pub fn throttled(&self) {
        let mut a = self.lock();
        if !a.slow_start && a.changed.elapsed() < SHRINK_ROUND {
            return;
        }
        a.slow_start = false;
        let halved = (a.rate / 2).max(1);
        self.set(&mut a, halved);
    }

    fn set(&self, a: &mut Adapt, rate: u32) {
        if rate != a.rate {
            a.rate = rate;
            a.limiter = Arc::new(limiter(rate, &self.clock));
        }
        a.changed = tokio::time::Instant::now();
        self.limited.store(false, Ordering::Release);
    }

    /// Takes a slot if one is free now; otherwise how long until one is.
    fn try_take(&self) -> Result<(), Duration> {
        let limiter = self.limiter();
        limiter.check().map_err(|not_until| {
            self.limited.store(true, Ordering::Release);
            not_until.wait_time_from(self.clock.now())
        })
    }

    /// Waits until one more request is allowed; inside [`background`], also
    /// until no foreground request is waiting.
    pub async fn acquire(&self) {
        if is_background() {
            return self.acquire_background().await;
        }
        if self.try_take().is_ok() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
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
            match self.try_take() {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

fn limiter(rate: u32, clock: &TokioClock) -> Limiter {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(Quota::per_second(rate), clock.clone())
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

    /// Takes `n` slots one after another, reporting each as answered.
    async fn busy(gate: &RateGate, n: usize) {
        for _ in 0..n {
            gate.acquire().await;
            gate.answered();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_starts_low_doubles_while_busy_and_halves_on_429() {
        let gate = RateGate::new(NonZeroU32::new(100).unwrap());
        assert_eq!(gate.rate(), START_RATE);
        // Idle time alone does not raise it: nothing queued.
        tokio::time::sleep(Duration::from_secs(5)).await;
        gate.acquire().await;
        gate.answered();
        assert_eq!(gate.rate(), START_RATE);
        // Requests queue at the gate: it doubles (at most every quarter
        // second), up to the ceiling.
        let start = tokio::time::Instant::now();
        busy(&gate, 12).await;
        assert_eq!(gate.rate(), 20, "after {:?}", start.elapsed());
        busy(&gate, 45).await;
        assert_eq!(gate.rate(), 40);
        busy(&gate, 85).await;
        assert_eq!(gate.rate(), 80);
        busy(&gate, 170).await;
        assert_eq!(gate.rate(), 100, "never above the ceiling");
        // A 429 halves it; more 429s in the same second do not.
        gate.throttled();
        assert_eq!(gate.rate(), 50);
        gate.throttled();
        gate.throttled();
        assert_eq!(gate.rate(), 50);
        // After a 429 it grows by an eighth a round, not doubling.
        busy(&gate, 110).await;
        assert_eq!(gate.rate(), 56);
        tokio::time::sleep(Duration::from_secs(1)).await;
        gate.throttled();
        assert_eq!(gate.rate(), 28);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            gate.throttled();
        }
        assert_eq!(gate.rate(), 1, "never below one a second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ceiling_below_the_start_rate_is_the_rate() {
        let gate = RateGate::new(NonZeroU32::new(3).unwrap());
        assert_eq!(gate.rate(), 3);
        busy(&gate, 20).await;
        assert_eq!(gate.rate(), 3);
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
