//! The worker's side of job lookup: state changes gathered as jobs move, coalesced per job
//! and written to [`JOBS_TOPIC`] in one publish per commit ([`Recorder::flush`], called by
//! the worker as it commits offsets), by a writer task of their own, so the worker's loop
//! never waits for the write (on the embedded log that wait, an fsync per commit, halved the
//! no-op rate).
//!
//! Bounded: at most [`IN_FLIGHT`] batches are being written, and at most [`MAX_PENDING`]
//! changes wait beside them; beyond that the oldest are dropped, with a warning: lookup is
//! never a reason for a job to wait. The price of not waiting: a crash can lose the states of
//! the batches in flight (the last commit interval or so) while their offsets committed;
//! those jobs then show the state before (`running`, `waiting`). The attempts' start times and errors are remembered only while a job is
//! unfinished in this worker, at most [`MAX_LIVE`] of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use conveyor_core::{headers, Backend, ConsumedRecord};
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, JobState, Place, StateKind, ERROR_BYTES, JOBS_TOPIC};

/// The most state changes waiting for a flush.
pub const MAX_PENDING: usize = 200_000;

/// The most jobs retrying in memory whose last error a worker remembers.
pub const MAX_LIVE: usize = 200_000;

/// Records per publish call.
const CHUNK: usize = 5_000;

/// Batches handed to the writer and not yet written, at most.
pub const IN_FLIGHT: usize = 4;

#[derive(Default)]
struct Inner {
    pending: Vec<JobState>,
    /// The last error of each job retrying in memory, until it finishes.
    errors: HashMap<String, String>,
}

/// A worker's state changes waiting for the next commit.
pub struct Recorder {
    group: Arc<str>,
    inner: Mutex<Inner>,
    /// How many changes wait (read without the lock by the worker's loop).
    pending: std::sync::atomic::AtomicUsize,
    /// The writer task's queue, started at the first flush.
    writer: OnceLock<mpsc::Sender<Msg>>,
    /// States dropped because the writer could not keep up.
    pub dropped: AtomicU64,
    /// State records written.
    pub written: Arc<AtomicU64>,
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
    /// When the job's latest attempt started (Unix ms).
    pub started_at: Option<i64>,
}

impl Recorder {
    /// A recorder for `group`'s worker.
    pub fn new(group: impl Into<String>) -> Self {
        Recorder {
            group: Arc::from(group.into()),
            inner: Mutex::default(),
            pending: Default::default(),
            writer: OnceLock::new(),
            dropped: AtomicU64::default(),
            written: Arc::default(),
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
        // a job back from a delay tier was written again: its `produced_at` says when it was
        // enqueued (parsed only then: the plain case costs nothing)
        let enqueued_at = match r.headers.get(headers::RETRY_GROUP) {
            None => r.timestamp,
            Some(_) => r
                .headers
                .get_str(headers::PRODUCED_AT)
                .and_then(headers::parse_time)
                .map_or(r.timestamp, crate::time::forwarder::millis),
        };
        let error = detail
            .error
            .map(|e| crate::worker::dead_letter::cut_to(e, ERROR_BYTES));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // the error of an in-memory retry is remembered until the job finishes
        let last_error = match (state, error) {
            (StateKind::Retrying, Some(e)) => {
                if inner.errors.len() >= MAX_LIVE {
                    inner.errors.clear();
                }
                inner.errors.insert(id.to_owned(), e.clone());
                Some(e)
            }
            (s, error) if s.is_final() && !inner.errors.is_empty() => {
                error.or_else(|| inner.errors.remove(id))
            }
            (_, Some(e)) => Some(e),
            (_, None) if !inner.errors.is_empty() => inner.errors.get(id).cloned(),
            _ => None,
        };
        let last_error =
            last_error.or_else(|| r.headers.get_str(headers::LAST_ERROR).map(str::to_owned));
        inner.pending.push(JobState {
            id: id.to_owned(),
            state,
            place,
            group: None,
            attempts,
            enqueued_at: Some(enqueued_at),
            started_at: detail.started_at,
            finished_at: state.is_final().then_some(now),
            until: detail.until,
            last_error,
            reason: detail.reason.map(str::to_owned),
            dead_letter: detail.dead_letter,
            updated_at: now,
        });
        self.pending.store(inner.pending.len(), Ordering::Relaxed);
        inner.pending.len() >= MAX_PENDING
    }

    /// Whether changes wait for a flush.
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// Hands the waiting changes to the recorder's writer task (started at the first call),
    /// which writes the last one per job in as few publishes as it takes, batches in order.
    /// Never waits for the write: when [`IN_FLIGHT`] batches are still being written the
    /// changes stay here for the next flush (at most [`MAX_PENDING`]; the oldest beyond it are
    /// dropped, with a warning).
    pub fn flush(&self, backend: &Arc<dyn Backend>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.pending.is_empty() {
            return;
        }
        let tx = self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel(IN_FLIGHT);
            let written = Arc::clone(&self.written);
            tokio::spawn(write_loop(Arc::clone(backend), rx, written));
            tx
        });
        let batch = std::mem::take(&mut inner.pending);
        self.pending.store(0, Ordering::Relaxed);
        let group = Arc::clone(&self.group);
        match tx.try_send(Msg::Batch(group, batch)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Batch(_, mut kept))) => {
                if kept.len() > MAX_PENDING {
                    let over = kept.len() - MAX_PENDING;
                    kept.drain(..over);
                    if self.dropped.fetch_add(over as u64, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            dropped = over,
                            "job states dropped: {JOBS_TOPIC} is not written fast enough (lookup shows those jobs' earlier states)"
                        );
                    }
                }
                self.pending.store(kept.len(), Ordering::Relaxed);
                inner.pending = kept;
            }
            Err(_) => {}
        }
    }

    /// A clean stop: hands over and waits for everything noted, flushing again while changes
    /// were kept back (the writer had [`IN_FLIGHT`] batches), until none wait or `limit` passes.
    pub async fn drain(&self, backend: &Arc<dyn Backend>, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                self.flush(backend);
                self.sync().await;
                if !self.has_pending() {
                    break;
                }
            }
        })
        .await;
    }

    /// Waits until the batches handed to the writer are written (or the writer gave up).
    pub async fn sync(&self) {
        let Some(tx) = self.writer.get() else {
            return;
        };
        let (done, written) = oneshot::channel();
        if tx.send(Msg::Sync(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

/// What the writer task is handed.
enum Msg {
    /// Changes to write, of this group.
    Batch(Arc<str>, Vec<JobState>),
    /// Answered once everything before it is written.
    Sync(oneshot::Sender<()>),
}

/// Writes the batches in order; a publish that fails is tried again (backing off up to 5 s)
/// until the backend is closed.
async fn write_loop(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Msg>,
    written: Arc<AtomicU64>,
) {
    let mut packed = None;
    while let Some(msg) = rx.recv().await {
        let batch = match msg {
            Msg::Sync(done) => {
                let _ = done.send(());
                continue;
            }
            Msg::Batch(group, b) => (group, b),
        };
        let (group, batch) = batch;
        let mut states = coalesce(batch);
        for s in &mut states {
            s.group = Some(group.to_string());
        }
        let packed = *match &packed {
            Some(p) => p,
            None => packed.insert(super::packs(&*backend).await),
        };
        let records = super::encode(&states, packed, "");
        for chunk in records.chunks(CHUNK) {
            let mut backoff = Duration::from_millis(100);
            loop {
                match backend.publish(JOBS_TOPIC, chunk.to_vec()).await {
                    Ok(_) => {
                        written.fetch_add(states.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(conveyor_core::Error::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, topic = JOBS_TOPIC, "cannot write job states; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

/// The most advanced change of each job ([`JobState::rank`]; the later one of equal rank),
/// in the order of the changes kept.
fn coalesce(pending: Vec<JobState>) -> Vec<JobState> {
    let mut best: HashMap<&str, usize> = HashMap::with_capacity(pending.len());
    for (i, s) in pending.iter().enumerate() {
        let e = best.entry(s.id.as_str()).or_insert(i);
        if s.rank() >= pending[*e].rank() {
            *e = i;
        }
    }
    if best.len() == pending.len() {
        return pending;
    }
    let keep: Vec<bool> = pending
        .iter()
        .enumerate()
        .map(|(i, s)| best[s.id.as_str()] == i)
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

    /// A job's changes within one batch come to its most advanced one, which keeps the error
    /// of an in-memory retry; a `running` noted after the job's end does not undo it.
    #[test]
    fn changes_coalesce_per_job_by_rank_and_keep_the_retry_error() {
        let r = Recorder::new("g");
        let (a, b) = (record("a", 1), record("b", 2));
        let started = |at| Detail {
            started_at: Some(at),
            ..Default::default()
        };
        r.note(&b, StateKind::Running, 1, started(7));
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
        r.note(&a, StateKind::Succeeded, 2, started(8));
        r.note(&a, StateKind::Running, 2, started(8));
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
        assert_eq!((a.started_at, a.enqueued_at), (Some(8), Some(5)));
        assert!(a.finished_at.is_some());
        assert!(
            r.inner.lock().unwrap().errors.is_empty(),
            "finished: forgotten"
        );
    }
}
