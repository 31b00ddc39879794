//! Unique jobs, worker side: the ledger of unique keys that jobs hold, shared through the backend.
//!
//! A job with a `unique_key` header holds the key (per group and topic) from when it was
//! enqueued until its `unique_until`. Before a unique job runs, the worker appends a *claim* to
//! the ledger topic [`UNIQUE_TOPIC`] (one partition, written by every conveyor process of the
//! backend) and reads the ledger up to and including that claim. The ledger's order decides:
//! claims are applied in offset order, and a claim loses when the key is held, by another job,
//! over a window that overlaps the claim's own (`[enqueued, until]`). A job whose claim lost is
//! a duplicate and is dropped without running (`WorkerStats::unique_dropped`, and a warning
//! naming both ids); one whose claim won (or that already holds the key: a retry, a
//! redelivery) runs. Because the order is the log's, two workers deciding at once, on two
//! partitions or in two processes, agree: at most one job of a key runs within its window. A job
//! whose window does not overlap the holder's (enqueued after the hold ended) is not a duplicate.
//!
//! The same check runs on every backend: on the embedded backend duplicates are already refused
//! at enqueue (`409 duplicate_job`), and this also covers records other producers wrote. Holds
//! whose window has ended are forgotten; a new process reads the ledger from its start (kept 400
//! days, the longest hold plus a margin). Cost: a job that takes its key writes one claim and
//! reads the ledger up to it; a duplicate of a key already held is decided after reading the
//! ledger's end, without a write (its claim would lose).
//!
//! **Memory is bounded in bytes**: a ledger keeps at most `max_bytes` of holds
//! ([`DEFAULT_MAX_HOLD_BYTES`], 64 MiB; a hold counts its group, topic, key and holder id, and
//! [`HOLD_OVERHEAD`]). Past it, the holds that end first are forgotten (down to three quarters
//! of the bound), counted ([`UniqueLedger::forgotten_early`]) and warned about: a duplicate of
//! one of those keys may then run (uniqueness is given up for them, nothing is lost). On the
//! embedded backend the enqueue-side check still refuses such a duplicate.

use std::collections::HashMap;
use std::sync::Arc;

use conveyor_core::{Backend, Error, Record, Result, TopicSpec};
use serde::{Deserialize, Serialize};

/// The ledger topic.
pub const UNIQUE_TOPIC: &str = "conveyor.unique";

/// How long the ledger keeps a claim: the longest hold a job may ask for (366 days) and a margin.
const RETENTION_MS: i64 = 400 * 24 * 3600 * 1000;

/// Holds are forgotten this long after their window ended (clock differences, backlogs).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// The most bytes of holds a ledger keeps in memory unless set: 64 MiB.
pub const DEFAULT_MAX_HOLD_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes a hold counts beyond its strings: its map entry and the rest of its bookkeeping.
pub const HOLD_OVERHEAD: u64 = 96;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    group: String,
    topic: String,
    key: String,
    id: String,
    /// When the job was enqueued (ms since the epoch).
    #[serde(default)]
    enqueued: i64,
    until: i64,
}

/// What the ledger says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It holds the key (now, or already did): run it.
    Run,
    /// Another job holds the key over an overlapping window: drop this one.
    Duplicate {
        /// The message id of the job holding the key.
        holder: String,
        /// When its hold ends (ms since the epoch).
        until: i64,
    },
}

/// One key's holder.
#[derive(Debug, Clone)]
struct Held {
    id: String,
    enqueued: i64,
    until: i64,
}

type HoldKey = (String, String, String);

fn hold_bytes(k: &HoldKey, h: &Held) -> u64 {
    (k.0.len() + k.1.len() + k.2.len() + h.id.len()) as u64 + HOLD_OVERHEAD
}

#[derive(Debug)]
struct State {
    /// (group, topic, key) -> the job holding it.
    holds: HashMap<HoldKey, Held>,
    next: i64,
    /// The bytes of `holds` ([`hold_bytes`]).
    bytes: u64,
    /// At most this many bytes of holds.
    max_bytes: u64,
    /// Holds forgotten before they ended, for the bound.
    forgotten_early: u64,
}

impl State {
    fn new(max_bytes: u64) -> Self {
        State {
            holds: HashMap::new(),
            next: 0,
            bytes: 0,
            max_bytes,
            forgotten_early: 0,
        }
    }

    /// Applies a claim in ledger order: it takes the key unless another job holds it over an
    /// overlapping window.
    fn apply(&mut self, c: Claim) {
        let k = (c.group, c.topic, c.key);
        if let Some(h) = self.holds.get(&k) {
            if h.id != c.id && overlaps(h.enqueued, h.until, c.enqueued, c.until) {
                return;
            }
        }
        let held = Held {
            id: c.id,
            enqueued: c.enqueued,
            until: c.until,
        };
        self.bytes += hold_bytes(&k, &held);
        if let Some(old) = self.holds.get(&k) {
            self.bytes = self.bytes.saturating_sub(hold_bytes(&k, old));
        }
        self.holds.insert(k, held);
        if self.bytes > self.max_bytes {
            self.shed();
        }
    }

    /// Forgets the holds that end first until a quarter of the bound is free again.
    fn shed(&mut self) {
        let mut by_end: Vec<(i64, HoldKey)> = self
            .holds
            .iter()
            .map(|(k, h)| (h.until, k.clone()))
            .collect();
        by_end.sort_unstable();
        let target = self.max_bytes / 4 * 3;
        let mut forgotten = 0;
        for (_, k) in by_end {
            if self.bytes <= target {
                break;
            }
            if let Some(h) = self.holds.remove(&k) {
                self.bytes = self.bytes.saturating_sub(hold_bytes(&k, &h));
                forgotten += 1;
            }
        }
        self.forgotten_early += forgotten;
        tracing::warn!(
            forgotten,
            bytes = self.bytes,
            max_bytes = self.max_bytes,
            "unique-key holds take more memory than their bound: those ending first are forgotten, and a duplicate of one of their keys may run"
        );
    }

    fn verdict(&self, k: &(String, String, String), id: &str) -> Option<Verdict> {
        let h = self.holds.get(k)?;
        Some(match h.id == id {
            true => Verdict::Run,
            false => Verdict::Duplicate {
                holder: h.id.clone(),
                until: h.until,
            },
        })
    }

    fn forget_ended(&mut self, now: i64) {
        let mut bytes = self.bytes;
        self.holds.retain(|k, h| {
            let keep = h.until.saturating_add(FORGET_AFTER_MS) > now;
            if !keep {
                bytes = bytes.saturating_sub(hold_bytes(k, h));
            }
            keep
        });
        self.bytes = bytes;
    }
}

fn overlaps(a_from: i64, a_until: i64, b_from: i64, b_until: i64) -> bool {
    a_from < b_until && b_from < a_until
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct UniqueLedger {
    backend: Arc<dyn Backend>,
    state: tokio::sync::Mutex<State>,
}

impl UniqueLedger {
    /// Creates the ledger topic when missing; keeps at most [`DEFAULT_MAX_HOLD_BYTES`] of holds.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        Self::open_with(backend, DEFAULT_MAX_HOLD_BYTES).await
    }

    /// [`UniqueLedger::open`] keeping at most `max_bytes` of holds in memory.
    pub async fn open_with(backend: Arc<dyn Backend>, max_bytes: u64) -> Result<Self> {
        let mut spec = TopicSpec::new(UNIQUE_TOPIC, 1);
        spec.retention_ms = Some(RETENTION_MS);
        match backend.create_topic(&spec).await {
            Ok(_) | Err(Error::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(UniqueLedger {
            backend,
            state: tokio::sync::Mutex::new(State::new(max_bytes)),
        })
    }

    /// The bytes of the holds in memory now.
    pub async fn held_bytes(&self) -> u64 {
        self.state.lock().await.bytes
    }

    /// Holds forgotten before they ended, for the memory bound.
    pub async fn forgotten_early(&self) -> u64 {
        self.state.lock().await.forgotten_early
    }

    /// Decides whether job `id` of `group` on `topic`, enqueued at `enqueued_ms` and holding
    /// `key` until `until_ms`, runs (see the module docs). When it runs, its claim is in the
    /// ledger before this returns.
    pub async fn admit(
        &self,
        group: &str,
        topic: &str,
        key: &str,
        id: &str,
        enqueued_ms: i64,
        until_ms: i64,
    ) -> Result<Verdict> {
        let mut state = self.state.lock().await;
        let k = (group.to_owned(), topic.to_owned(), key.to_owned());
        let end = self.end().await?;
        self.read_to(&mut state, end).await?;
        if let Some(h) = state.holds.get(&k) {
            // already decided for this job (a retry, a redelivery): no new claim
            if h.id == id {
                return Ok(Verdict::Run);
            }
            // a claim written now would come after the holder's and lose: no new claim either
            if overlaps(h.enqueued, h.until, enqueued_ms, until_ms) {
                return Ok(Verdict::Duplicate {
                    holder: h.id.clone(),
                    until: h.until,
                });
            }
        }
        let claim = Claim {
            group: group.to_owned(),
            topic: topic.to_owned(),
            key: key.to_owned(),
            id: id.to_owned(),
            enqueued: enqueued_ms,
            until: until_ms,
        };
        let value = serde_json::to_vec(&claim).expect("a claim serializes");
        let mut record = Record::new(value).with_key(key.as_bytes().to_vec());
        record.partition = Some(0);
        let at = self.backend.publish(UNIQUE_TOPIC, vec![record]).await?;
        // every claim up to ours, in the ledger's order, decides
        self.read_to(&mut state, at[0].offset + 1).await?;
        state.forget_ended(crate::time::forwarder::millis(std::time::SystemTime::now()));
        Ok(state.verdict(&k, id).unwrap_or(Verdict::Run))
    }

    /// The ledger's end (its next offset).
    async fn end(&self) -> Result<i64> {
        let info = self
            .backend
            .describe_topic(UNIQUE_TOPIC)
            .await?
            .ok_or_else(|| Error::UnknownTopic(UNIQUE_TOPIC.to_owned()))?;
        Ok(info.partitions.first().map_or(0, |p| p.high))
    }

    /// Applies the claims up to (not including) offset `end`; a read that keeps coming back
    /// empty before `end` (a fetch timing out) is an error, never "no claims".
    async fn read_to(&self, state: &mut State, end: i64) -> Result<()> {
        let from = state.next;
        crate::entry_log::read_entries::<Claim>(
            &*self.backend,
            UNIQUE_TOPIC,
            from,
            Some(end),
            1000,
            "a unique-key claim",
            |claims, next| {
                for c in claims {
                    state.apply(c);
                }
                state.next = next;
            },
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, enqueued: i64, until: i64) -> Claim {
        Claim {
            group: "g".into(),
            topic: "t".into(),
            key: "k".into(),
            id: id.into(),
            enqueued,
            until,
        }
    }

    #[test]
    fn the_first_claim_in_the_ledger_wins_over_overlapping_ones() {
        let k = ("g".to_owned(), "t".to_owned(), "k".to_owned());
        let mut s = State::new(DEFAULT_MAX_HOLD_BYTES);
        s.apply(claim("a", 0, 100));
        s.apply(claim("b", 50, 150));
        assert_eq!(s.verdict(&k, "a"), Some(Verdict::Run));
        assert!(matches!(
            s.verdict(&k, "b"),
            Some(Verdict::Duplicate { .. })
        ));
        // a's retry claims again: still a's
        s.apply(claim("a", 0, 100));
        assert_eq!(s.verdict(&k, "a"), Some(Verdict::Run));
        // enqueued after a's hold ended: not a duplicate, it takes the key
        s.apply(claim("c", 120, 220));
        assert_eq!(s.verdict(&k, "c"), Some(Verdict::Run));
        // a delayed job enqueued long ago whose window does not overlap c's runs too
        s.apply(claim("d", -500, -400));
        assert_eq!(s.verdict(&k, "d"), Some(Verdict::Run));
        s.forget_ended(10 * FORGET_AFTER_MS);
        assert_eq!(s.verdict(&k, "d"), None);
        assert_eq!(s.bytes, 0);
    }

    /// Holds are bounded in bytes: past the bound those ending first go, the bytes counted
    /// stay within it, and the holds ending last are kept.
    #[test]
    fn holds_are_bounded_in_bytes_those_ending_first_forgotten() {
        let mut s = State::new(10_000);
        for i in 0..100 {
            let mut c = claim(&format!("job-{i}"), 0, 1_000 + i);
            c.key = format!("{i:0>200}");
            s.apply(c);
            assert!(s.bytes <= s.max_bytes, "{} bytes held", s.bytes);
        }
        let counted: u64 = s.holds.iter().map(|(k, h)| hold_bytes(k, h)).sum();
        assert_eq!(s.bytes, counted);
        assert!(s.forgotten_early > 50, "{}", s.forgotten_early);
        let last = ("g".to_owned(), "t".to_owned(), format!("{:0>200}", 99));
        assert_eq!(s.verdict(&last, "job-99"), Some(Verdict::Run));
        let first = ("g".to_owned(), "t".to_owned(), format!("{:0>200}", 0));
        assert_eq!(
            s.verdict(&first, "job-0"),
            None,
            "the hold ending first went"
        );
    }
}
