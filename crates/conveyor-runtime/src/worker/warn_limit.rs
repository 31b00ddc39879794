//! Rate limits for warnings written once per job: at most [`BURST`] lines per kind and topic in
//! each [`WINDOW`], then one counted summary when the window ends: "… and 4,210 more dead letters
//! on topic orders in the last 10 s". 50,000 dead letters wrote 113,560 lines before; now a
//! burst writes a bounded number, and every job is still counted (the lines plus the summaries'
//! counts add up to the jobs).
//!
//! A window ends when the next warning of its kind and topic comes after it, or when
//! [`WarnLimit::flush`] finds it over (the worker calls it every 100 ms and when it stops), so a
//! summary is never held back long after its burst.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window the lines are counted in.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The lines written per kind and topic in a [`WINDOW`]; the rest are counted.
pub const BURST: u32 = 20;

/// What a warning is about, for its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A job dead-lettered.
    DeadLetter,
    /// A job failed and will be retried.
    Retry,
}

impl Kind {
    /// The summary's words: "dead letters", "retries".
    pub fn plural(self) -> &'static str {
        match self {
            Kind::DeadLetter => "dead letters",
            Kind::Retry => "retries",
        }
    }
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// Counts warnings per (kind, topic); shared by a worker's attempts.
#[derive(Debug, Default)]
pub struct WarnLimit {
    windows: Mutex<HashMap<(Kind, String), Window>>,
}

impl WarnLimit {
    /// Whether the warning of `kind` about `topic` may be written now; when not, it is counted
    /// for the window's summary. A window that ended is summarized first.
    pub fn admit(&self, kind: Kind, topic: &str, group: &str) -> bool {
        self.admit_at(kind, topic, group, Instant::now())
    }

    fn admit_at(&self, kind: Kind, topic: &str, group: &str, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows
            .entry((kind, topic.to_owned()))
            .or_insert_with(|| Window {
                started: now,
                logged: 0,
                suppressed: 0,
            });
        if now.duration_since(w.started) >= WINDOW {
            summarize(kind, topic, group, w);
            *w = Window {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged < BURST {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// Writes the summaries of the windows that ended (every window's with `all`, as a worker
    /// stops) and forgets them.
    pub fn flush(&self, group: &str, all: bool) {
        self.flush_at(group, all, Instant::now());
    }

    fn flush_at(&self, group: &str, all: bool, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.retain(|(kind, topic), w| {
            let over = all || now.duration_since(w.started) >= WINDOW;
            if over {
                summarize(*kind, topic, group, w);
            }
            !over
        });
    }
}

/// The summary line of a window, when it held back any.
fn summarize(kind: Kind, topic: &str, group: &str, w: &Window) {
    if w.suppressed == 0 {
        return;
    }
    let secs = WINDOW.as_secs();
    tracing::warn!(
        topic,
        group,
        kind = kind.plural(),
        suppressed = w.suppressed,
        window_s = secs,
        "... and {} more {} on topic {topic} in the last {secs} s (not logged one by one)",
        thousands(w.suppressed),
        kind.plural()
    );
}

/// `n` with commas between thousands: `4,210`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_counted_per_kind_and_topic() {
        let l = WarnLimit::default();
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|_| l.admit_at(Kind::DeadLetter, "a", "g", t0))
            .count();
        assert_eq!(admitted, BURST as usize);
        // another topic and another kind have their own
        assert!(l.admit_at(Kind::DeadLetter, "b", "g", t0));
        assert!(l.admit_at(Kind::Retry, "a", "g", t0));
        let held = |l: &WarnLimit| {
            l.windows.lock().unwrap()[&(Kind::DeadLetter, "a".to_owned())].suppressed
        };
        assert_eq!(held(&l), 100 - BURST as u64);
        // a new window writes again
        assert!(l.admit_at(Kind::DeadLetter, "a", "g", t0 + WINDOW));
        assert_eq!(held(&l), 0);
        l.flush_at("g", false, t0 + WINDOW);
        assert_eq!(
            l.windows.lock().unwrap().len(),
            1,
            "the expired windows are gone"
        );
        l.flush_at("g", true, t0);
        assert!(l.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(thousands(4210), "4,210");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
