//! A schedule whose expression or time zone changed while this member fires it (a `PUT` of a new
//! expression): which ticks of the old and of the new expression still fire.
//!
//! The change takes effect when it was put (`at`), not when the scheduler first sees it, which
//! can be later: the scheduler passes at most every 250 ms, and at each tick (so a put just
//! before a tick is seen only at the tick's own pass), and in another process it reads the
//! control log every 250 ms. So, with everything up to `cursor` fired or given up:
//! - the old expression's ticks in `(cursor, at]` fire (they were due before the change);
//! - the new expression's ticks in `(at, now]` fire, except those the old expression also has
//!   and already fired (at or before `fired`, the cursor when the change was seen): a tick both
//!   share fires once.
//!
//! `at` is clamped by the caller into what this member can vouch for (not before it began
//! firing, not more than the grace ago, not after now), so a put stamped by a skewed clock can
//! neither replay old ticks nor hold the schedule back.

use crate::time::schedule::{Compiled, Due};

/// A change seen and not yet fired across (its ticks' publish may fail and be retried).
#[derive(Debug, Clone)]
pub(super) struct Change {
    /// The schedule before the change.
    pub(super) old: Compiled,
    /// The cursor when the change was seen: the old expression's ticks up to it were fired.
    pub(super) fired: i64,
    /// When the change was put (Unix ms), clamped.
    pub(super) at: i64,
}

impl Change {
    /// What is due at `now` (old expression's ticks, new expression's ticks), everything up to
    /// `cursor` being fired or given up; each part follows its own `missed` policy beyond
    /// `grace_ms`.
    pub(super) fn due(&self, new: &Compiled, cursor: i64, now: i64, grace_ms: i64) -> (Due, Due) {
        let old = self.old.due(cursor, self.at.min(now), grace_ms);
        let mut after = new.due(self.at, now, grace_ms);
        after
            .fire
            .retain(|t| !(*t <= self.fired && self.old.next_after(t - 1) == Some(*t)));
        (old, after)
    }
}

/// The expression and time zone: what decides a schedule's ticks.
pub(super) fn definition(c: &Compiled) -> (&str, &str) {
    (&c.schedule().cron, &c.schedule().timezone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::schedule::{Missed, Schedule};

    fn compiled(cron: &str) -> Compiled {
        Schedule {
            name: "s".into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            topic: "jobs".into(),
            job_type: "t".into(),
            payload: serde_json::json!({}),
            key: None,
            missed: Missed::Skip,
        }
        .compile()
        .unwrap()
    }

    const T: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a multiple of 4 s
    const GRACE: i64 = 60_000;

    #[test]
    fn a_put_just_before_a_shared_tick_fires_it_once() {
        let (every2, every4) = (compiled("*/2 * * * * *"), compiled("*/4 * * * * *"));
        // last pass 249 ms before the tick, the put 100 ms before it, seen at the tick's pass
        let change = Change {
            old: every2.clone(),
            fired: T - 249,
            at: T - 100,
        };
        let (old, new) = change.due(&every4, T - 249, T + 1, GRACE);
        assert_eq!((old.fire, new.fire), (vec![], vec![T]));
        // seen late (another process): the old expression fired the tick already
        let change = Change {
            old: every2,
            fired: T + 1,
            at: T - 100,
        };
        let (old, new) = change.due(&every4, T + 1, T + 251, GRACE);
        assert_eq!((old.fire, new.fire), (vec![], vec![]), "fired once");
    }

    #[test]
    fn ticks_before_the_put_follow_the_old_expression_and_after_it_the_new() {
        let (every2, every3) = (compiled("*/2 * * * * *"), compiled("*/3 * * * * *"));
        // T+2 s is the old expression's tick before the put at T+2.5 s; seen at T+3.001 s: the
        // new expression's T+3 s fires too
        let change = Change {
            old: every2.clone(),
            fired: T + 1,
            at: T + 2_500,
        };
        let (old, new) = change.due(&every3, T + 1, T + 3_001, GRACE);
        assert_eq!((old.fire, new.fire), (vec![T + 2_000], vec![T + 3_000]));
        // seen 2.5 s after a put at T+0.5 s, the old expression having fired T+2 s meanwhile:
        // the new one's T+3 s fires; its T+0 s was before the put
        let change = Change {
            old: every2,
            fired: T + 2_001,
            at: T + 500,
        };
        let (old, new) = change.due(&every3, T + 2_001, T + 3_001, GRACE);
        assert_eq!((old.fire, new.fire), (vec![], vec![T + 3_000]));
        // and a tick of the new expression only, between the put and the cursor, fires late
        let every1 = compiled("* * * * * *");
        let change = Change {
            old: compiled("*/2 * * * * *"),
            fired: T + 2_001,
            at: T + 500,
        };
        let (_, new) = change.due(&every1, T + 2_001, T + 2_300, GRACE);
        assert_eq!(new.fire, vec![T + 1_000], "T+2 s was fired by the old one");
    }
}
