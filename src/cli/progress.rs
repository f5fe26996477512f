//! Output of a one-shot command that works on many policies at once: each
//! line as it comes, and on a terminal a progress line kept below them.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;

/// Prints result lines to stdout as policies report them, and, when stderr
/// is a terminal and there is more than one policy, a `12/200 rotated, 1
/// failed` line on stderr that each new line moves down.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    verb: &'static str,
    terminal: bool,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    done: usize,
    failed: usize,
}

impl Progress {
    pub fn new(total: usize, verb: &'static str) -> Progress {
        Progress {
            total,
            verb,
            terminal: total > 1 && std::io::stderr().is_terminal(),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// One result line on stdout.
    pub fn say(&self, line: String) {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.clear();
        println!("{line}");
        self.draw(&counts);
    }

    /// One policy is finished.
    pub fn finished(&self, ok: bool) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.done += 1;
        if !ok {
            counts.failed += 1;
        }
        self.draw(&counts);
    }

    /// Every policy is finished: the progress line goes away.
    pub fn done(&self) {
        let _counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.clear();
    }

    fn clear(&self) {
        if self.terminal {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }

    fn draw(&self, c: &Counts) {
        if self.terminal {
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[2K{}",
                progress_text(c.done, self.total, c.failed, self.verb)
            );
            let _ = e.flush();
        }
    }
}

/// `12/200 rotated, 1 failed`.
fn progress_text(done: usize, total: usize, failed: usize, verb: &str) -> String {
    let mut s = format!("{done}/{total} {verb}");
    if failed > 0 {
        s.push_str(&format!(", {failed} failed"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_text_counts_failures_only_when_there_are_some() {
        assert_eq!(progress_text(12, 200, 0, "rotated"), "12/200 rotated");
        assert_eq!(progress_text(12, 200, 1, "swept"), "12/200 swept, 1 failed");
    }
}
