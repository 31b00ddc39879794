//! The worker's side of job lookup: state changes gathered as jobs move, coalesced per job
//! and written to [`JOBS_TOPIC`] in one publish per commit ([`Recorder::flush`], called by
//! the worker just before it commits offsets).
//!
//! Bounded: at most [`MAX_PENDING`] changes wait for a flush (the worker flushes every commit
//! interval, and at once when this many wait); a flush that fails keeps them for the next one
//! up to that bound and drops the oldest beyond it, with a warning: lookup is never a reason
//! for a job to wait. The attempts' start times and errors are remembered only while a job is
//! unfinished in this worker, at most [`MAX_LIVE`] of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use conveyor_core::{headers, Backend, ConsumedRecord, Record};

use super::{now_ms, JobState, Place, StateKind, ERROR_BYTES, JOBS_TOPIC};

/// The most state changes waiting for a flush.
pub const MAX_PENDING: usize = 200_000;

/// The most unfinished jobs whose start time and last error a worker remembers.
pub const MAX_LIVE: usize = 200_000;

/// Records per publish call.
const CHUNK: usize = 5_000;

#[derive(Default)]
struct Inner {
    pending: Vec<JobState>,
    /// Per unfinished job: its latest attempt's start and its last error.
    live: HashMap<String, (Option<i64>, Option<String>)>,
}

/// A worker's state changes waiting for the next commit.
#[derive(Default)]
pub struct Recorder {
    group: String,
    inner: Mutex<Inner>,
    /// States dropped because flushes kept failing.
    pub dropped: AtomicU64,
    /// State records written.
    pub written: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// What a change says beyond the job's kind.
#[derive(Debug, Default)]
pub struct Detail<'a> {
    /// `delayed`, `retrying`: when it is due.
    pub until: Option<i64>,
    /// The error of the attempt that failed.
    pub error: Option<&'a str>,
    /// `dead`: why; `duplicate`: the holder of the key.
    pub reason: Option<&'a str>,
    /// `dead`: where the dead letter is.
    pub dead_letter: Option<Place>,
}

impl Recorder {
    /// A recorder for `group`'s worker.
    pub fn new(group: impl Into<String>) -> Self {
        Recorder {
            group: group.into(),
            ..Default::default()
        }
    }

    /// Notes that the job of `r` reached `state` with `attempts` attempts started; returns
    /// whether the pending changes reached [`MAX_PENDING`] (flush now).
    pub fn note(
        &self,
        r: &ConsumedRecord,
        state: StateKind,
        attempts: u32,
        detail: Detail<'_>,
    ) -> bool {
        let place = Place {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
        };
        self.note_at(r, place, state, attempts, detail)
    }

    /// Like [`Recorder::note`], with the job's place given (a job in a delay tier is placed
    /// where it was before its move).
    pub fn note_at(
        &self,
        r: &ConsumedRecord,
        place: Place,
        state: StateKind,
        attempts: u32,
        detail: Detail<'_>,
    ) -> bool {
        let Some(id) = r.headers.get_str(headers::MESSAGE_ID) else {
            return false;
        };
        let now = now_ms();
        let enqueued_at = r
            .headers
            .get_str(headers::PRODUCED_AT)
            .and_then(headers::parse_time)
            .map_or(r.timestamp, crate::forwarder::millis);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let error = detail
            .error
            .map(|e| crate::dead_letter::cut_to(e, ERROR_BYTES));
        let (started_at, last_error) = match state {
            StateKind::Running => {
                if inner.live.len() >= MAX_LIVE && !inner.live.contains_key(id) {
                    inner.live.clear();
                }
                let e = inner.live.entry(id.to_owned()).or_default();
                e.0 = Some(now);
                (e.0, e.1.clone())
            }
            s if s.is_final() => {
                let (s, e) = inner.live.remove(id).unwrap_or_default();
                (s, error.or(e))
            }
            _ => match inner.live.get_mut(id) {
                Some(e) => {
                    if error.is_some() {
                        e.1.clone_from(&error);
                    }
                    (e.0, e.1.clone())
                }
                None => (None, error),
            },
        };
        let last_error =
            last_error.or_else(|| r.headers.get_str(headers::LAST_ERROR).map(str::to_owned));
        inner.pending.push(JobState {
            id: id.to_owned(),
            state,
            place,
            group: Some(self.group.clone()),
            attempts,
            enqueued_at: Some(enqueued_at),
            started_at,
            finished_at: state.is_final().then_some(now),
            until: detail.until,
            last_error,
            reason: detail.reason.map(str::to_owned),
            dead_letter: detail.dead_letter,
            updated_at: now,
        });
        inner.pending.len() >= MAX_PENDING
    }

    /// Whether changes wait for a flush.
    pub fn has_pending(&self) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .is_empty()
    }

    /// Writes the waiting changes, the last one per job, in as few publishes as it takes.
    pub async fn flush(&self, backend: &dyn Backend) {
        let pending =
            std::mem::take(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()).pending);
        if pending.is_empty() {
            return;
        }
        let states = coalesce(pending);
        let records: Vec<Record> = states
            .iter()
            .map(|s| {
                Record::new(serde_json::to_vec(s).expect("a job state serializes"))
                    .with_key(s.id.clone())
            })
            .collect();
        let mut failed_from = None;
        for (i, chunk) in records.chunks(CHUNK).enumerate() {
            match backend.publish(JOBS_TOPIC, chunk.to_vec()).await {
                Ok(_) => {
                    self.written
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = JOBS_TOPIC, "cannot write job states; trying again with the next commit");
                    failed_from = Some(i * CHUNK);
                    break;
                }
            }
        }
        let Some(from) = failed_from else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: Vec<JobState> = states.into_iter().skip(from).collect();
        kept.append(&mut inner.pending);
        if kept.len() > MAX_PENDING {
            let over = kept.len() - MAX_PENDING;
            kept.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
            tracing::warn!(
                dropped = over,
                "job states dropped: {JOBS_TOPIC} could not be written for a while (lookup shows those jobs' earlier states)"
            );
        }
        inner.pending = kept;
    }
}

/// The last change of each job, in the order of those last changes.
fn coalesce(pending: Vec<JobState>) -> Vec<JobState> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(pending.len());
    for (i, s) in pending.iter().enumerate() {
        last.insert(s.id.as_str(), i);
    }
    if last.len() == pending.len() {
        return pending;
    }
    let keep: Vec<bool> = pending
        .iter()
        .enumerate()
        .map(|(i, s)| last[s.id.as_str()] == i)
        .collect();
    pending
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_core::Headers;

    fn record(id: &str, offset: i64) -> ConsumedRecord {
        let mut h = Headers::new();
        h.insert(headers::MESSAGE_ID, id.to_owned());
        ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: 5,
            key: None,
            value: Default::default(),
            headers: h,
        }
    }

    /// A job's changes within one batch come to its last one, which keeps the start time and
    /// the error of the earlier ones.
    #[test]
    fn changes_coalesce_per_job_and_keep_start_and_error() {
        let r = Recorder::new("g");
        let (a, b) = (record("a", 1), record("b", 2));
        r.note(&a, StateKind::Running, 1, Detail::default());
        r.note(&b, StateKind::Running, 1, Detail::default());
        r.note(
            &a,
            StateKind::Retrying,
            1,
            Detail {
                until: Some(99),
                error: Some("boom"),
                ..Default::default()
            },
        );
        r.note(&a, StateKind::Running, 2, Detail::default());
        r.note(&a, StateKind::Succeeded, 2, Detail::default());
        let pending = std::mem::take(&mut r.inner.lock().unwrap().pending);
        let out = coalesce(pending);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].id.as_str(), out[0].state),
            ("b", StateKind::Running)
        );
        let a = &out[1];
        assert_eq!((a.state, a.attempts), (StateKind::Succeeded, 2));
        assert_eq!(a.last_error.as_deref(), Some("boom"));
        assert!(a.started_at.is_some() && a.finished_at.is_some());
        assert_eq!(a.enqueued_at, Some(5));
        assert!(
            r.inner.lock().unwrap().live.get("a").is_none(),
            "finished: forgotten"
        );
    }
}
