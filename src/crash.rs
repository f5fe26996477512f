//! Test-only crash points.
//!
//! When the environment variable `MDR_CRASH_AT` names a point, the process
//! kills itself with SIGKILL there, exactly as `kill -9` would. `NAME#N`
//! kills at the `N`th time the point is reached (counting from 1), so a
//! point inside a per-destination step can be aimed at the second
//! destination. This is how the crash-safety tests stop the real binary
//! at every step, and inside the steps that touch several files.

/// How often the armed point was reached, for `NAME#N`.
static HITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether any crash point is armed; read once.
static ARMED: std::sync::LazyLock<Option<(String, u32)>> = std::sync::LazyLock::new(|| {
    let spec = std::env::var("MDR_CRASH_AT").ok()?;
    match spec.split_once('#') {
        Some((name, n)) => Some((name.to_owned(), n.parse().ok()?)),
        None => Some((spec, 1)),
    }
});

/// Kills the process here if `MDR_CRASH_AT` names `point` (and this is
/// the armed hit).
pub fn point(point: &str) {
    let Some((name, nth)) = ARMED.as_ref() else {
        return;
    };
    if name != point {
        return;
    }
    let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if hit != *nth {
        return;
    }
    eprintln!("MDR_CRASH_AT={point}: killing the process");
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}
