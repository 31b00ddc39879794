//! Job lookup: where each job is and what became of it, kept as compact state records.
//!
//! Workers note each job's state changes in memory and hand them, coalesced per job, to a
//! writer task of their own at every commit ([`Recorder`]), which appends them to
//! `conveyor.jobs` ([`JOBS_TOPIC`], one partition): a quick job costs one record (its end;
//! `running` is noted only for attempts still running at a commit after the one they started
//! in), and the worker's loop never waits for the write. The HTTP API writes a `waiting` state
//! (`delayed` for a job due later) for each job it enqueues, batched in the background
//! ([`EnqueueLog`]). [`JobIndex`] folds the topic into memory and answers lookups and listings
//! by state; it never scans the job topics.
//!
//! Order: every state has a rank ([`JobState::rank`]: attempts, then waiting < delayed <
//! running < retrying < final), and a state never replaces one of higher rank, nor does the
//! API's `waiting` replace a worker's state: whichever is written last, a job's end stays.
//!
//! The topic is created with `cleanup.policy=delete` and states are packed up to 500 to a
//! record, a write per few hundred jobs on both backends (one record per state, as the topic
//! was compacted before, made every job on Kafka cost a second produce: processing ran at about
//! 0.6x of what it ran with lookup off). A compacted topic an earlier version created is still
//! written as it was: each state one record keyed by the job's id (the API's by
//! `<id>/enqueued`), so compaction keeps the last per key. Either way records older than 7 days
//! ([`RETENTION_MS`]) are deleted: a job whose last state is older is forgotten (lookup: `404`).
//!
//! Ids are the jobs' `message_id`s (UUIDs); a record without one is not tracked.

use std::sync::Arc;
use std::time::SystemTime;

use conveyor_core::{Backend, CleanupPolicy, Error, Result, TopicSpec};
use serde::{Deserialize, Serialize};

pub mod enqueued;
mod index;
pub mod recorder;

pub use enqueued::EnqueueLog;
pub use index::{JobIndex, ListPage, DEFAULT_MAX_JOBS};
pub use recorder::{Detail, Recorder};

/// The state topic.
pub const JOBS_TOPIC: &str = "conveyor.jobs";

/// How long a job's last state is kept: 7 days.
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The most bytes of an error kept in a state record.
pub const ERROR_BYTES: usize = 512;

/// What became of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// Enqueued; no worker has taken it yet.
    Waiting,
    /// Not due yet: waits (in memory or in a delay tier) `until`.
    Delayed,
    /// An attempt is running.
    Running,
    /// An attempt failed; the next one starts `until`.
    Retrying,
    /// Done.
    Succeeded,
    /// Dead-lettered: `reason` (`failed`, `exhausted`, `deadline`), `last_error`, `dead_letter`.
    Dead,
    /// Cancelled before it ran.
    Cancelled,
    /// Dropped without running: a unique job whose key another job held.
    Duplicate,
}

impl StateKind {
    /// The name used in the API and the records.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Waiting => "waiting",
            StateKind::Delayed => "delayed",
            StateKind::Running => "running",
            StateKind::Retrying => "retrying",
            StateKind::Succeeded => "succeeded",
            StateKind::Dead => "dead",
            StateKind::Cancelled => "cancelled",
            StateKind::Duplicate => "duplicate",
        }
    }

    /// Every state, in the order a job goes through them.
    pub const ALL: [StateKind; 8] = [
        StateKind::Waiting,
        StateKind::Delayed,
        StateKind::Running,
        StateKind::Retrying,
        StateKind::Succeeded,
        StateKind::Dead,
        StateKind::Cancelled,
        StateKind::Duplicate,
    ];

    /// Parses a state's name.
    pub fn parse(s: &str) -> Option<StateKind> {
        StateKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether nothing more happens to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StateKind::Succeeded | StateKind::Dead | StateKind::Cancelled | StateKind::Duplicate
        )
    }
}

/// Where a record is: partition and offset of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// One job's state, as written to [`JOBS_TOPIC`]. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The job's `message_id`.
    pub id: String,
    /// Its state.
    pub state: StateKind,
    /// Where the job's current copy is (a retry or delay through a tier comes back to its
    /// topic at a new offset).
    #[serde(flatten)]
    pub place: Place,
    /// The group that wrote the state (none for `waiting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// When it was enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<i64>,
    /// When its latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// `delayed`, `retrying`: when it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// The latest error (cut to [`ERROR_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `dead`: why (`failed`, `exhausted`, `deadline`); `duplicate`: the id holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `dead`: where its dead letter is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Place>,
    /// When the state was written.
    pub updated_at: i64,
}

impl JobState {
    /// How far the job had come: (attempts, step), the step ordering a job's states within
    /// an attempt (waiting, delayed, running, retrying, then a final state). A state never
    /// replaces one of a higher rank: a `running` noted late (its attempt finished meanwhile)
    /// or written again by a job run again after a crash does not undo its end.
    pub fn rank(&self) -> (u32, u8) {
        let step = match self.state {
            StateKind::Waiting => 0,
            StateKind::Delayed => 1,
            StateKind::Running => 2,
            StateKind::Retrying => 3,
            _ => 4,
        };
        (self.attempts, step)
    }

    /// The API's view: times as RFC 3339 text.
    pub fn to_json(&self) -> serde_json::Value {
        let t = |ms: Option<i64>| ms.map(time_text);
        serde_json::json!({
            "id": self.id,
            "state": self.state.as_str(),
            "topic": self.place.topic,
            "partition": self.place.partition,
            "offset": self.place.offset,
            "group": self.group,
            "attempts": self.attempts,
            "until": t(self.until),
            "last_error": self.last_error,
            "reason": self.reason,
            "dead_letter": self.dead_letter,
            "enqueued_at": t(self.enqueued_at),
            "started_at": t(self.started_at),
            "finished_at": t(self.finished_at),
            "updated_at": time_text(self.updated_at),
        })
    }
}

/// Unix milliseconds as RFC 3339 text.
pub fn time_text(ms: i64) -> String {
    conveyor_core::headers::format_time(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
}

/// Whether `id` is a job id: a UUID in its hyphenated text form (conveyor's `message_id`s).
pub fn is_job_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()
}

/// Creates [`JOBS_TOPIC`] when missing: one partition, records deleted after [`RETENTION_MS`],
/// not compacted (states are packed, see [`packs`]).
pub async fn ensure_topic(backend: &Arc<dyn Backend>) -> Result<()> {
    let mut spec = TopicSpec::new(JOBS_TOPIC, 1);
    spec.retention_ms = Some(RETENTION_MS);
    spec.cleanup_policy = CleanupPolicy::Delete;
    match backend.create_topic(&spec).await {
        Ok(_) | Err(Error::TopicConflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Most states per record when the topic is not compacted (a record of ~100 KB).
const PACK: usize = 500;

/// A packed record is closed once it holds this many bytes (it ends with one state more, a few
/// kilobytes at most: well under a broker's 1 MB).
const PACK_BYTES: usize = 256 * 1024;

/// Whether the states topic keeps every record (it does not compact, as [`ensure_topic`]
/// creates it), so states are packed, [`PACK`] to a record: a write per few hundred jobs
/// instead of one per job, and the reader keeps the last state per job all the same. A
/// compacted topic (an earlier version's) gets one record per state, keyed, for compaction to
/// keep the last.
pub(crate) async fn packs(backend: &dyn Backend) -> bool {
    matches!(
        backend.topic_spec(JOBS_TOPIC).await,
        Ok(Some(spec)) if spec.cleanup_policy == CleanupPolicy::Delete
    )
}

/// `states` as records of [`JOBS_TOPIC`]: packed ([`packs`]) or one per state keyed by its id
/// and `key_suffix`.
pub(crate) fn encode(
    states: &[JobState],
    packed: bool,
    key_suffix: &str,
) -> Vec<conveyor_core::Record> {
    use conveyor_core::Record;
    match packed {
        true => {
            // at most PACK states and about PACK_BYTES to a record (a state with a long error
            // escaped is some kilobytes: 500 of them would pass a broker's 1 MB)
            let mut records = Vec::new();
            let mut out: Vec<u8> = Vec::new();
            let mut n = 0;
            for s in states {
                out.push(if n == 0 { b'[' } else { b',' });
                s.write_json(&mut out);
                n += 1;
                if n == PACK || out.len() >= PACK_BYTES {
                    out.push(b']');
                    records.push(Record::new(std::mem::take(&mut out)));
                    n = 0;
                }
            }
            if n > 0 {
                out.push(b']');
                records.push(Record::new(out));
            }
            records
        }
        false => states
            .iter()
            .map(|s| {
                let mut out = Vec::with_capacity(256);
                s.write_json(&mut out);
                Record::new(out).with_key(format!("{}{key_suffix}", s.id))
            })
            .collect(),
    }
}

impl JobState {
    /// Appends the state as JSON, the same bytes as `serde_json::to_vec` gives (a test holds
    /// them equal), written field by field: serde's path through the flattened `place` cost
    /// about a fifth of a no-op job's instructions, and every finished job writes one.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, name: &str, v: &str) {
            out.extend_from_slice(name.as_bytes());
            serde_json::to_writer(&mut *out, v).expect("a string serializes");
        }
        fn number(out: &mut Vec<u8>, name: &str, v: i64) {
            out.extend_from_slice(name.as_bytes());
            serde_json::to_writer(&mut *out, &v).expect("a number serializes");
        }
        text(out, "{\"id\":", &self.id);
        text(out, ",\"state\":", self.state.as_str());
        text(out, ",\"topic\":", &self.place.topic);
        number(out, ",\"partition\":", self.place.partition.into());
        number(out, ",\"offset\":", self.place.offset);
        if let Some(g) = &self.group {
            text(out, ",\"group\":", g);
        }
        number(out, ",\"attempts\":", self.attempts.into());
        for (name, v) in [
            (",\"enqueued_at\":", self.enqueued_at),
            (",\"started_at\":", self.started_at),
            (",\"finished_at\":", self.finished_at),
            (",\"until\":", self.until),
        ] {
            if let Some(v) = v {
                number(out, name, v);
            }
        }
        if let Some(e) = &self.last_error {
            text(out, ",\"last_error\":", e);
        }
        if let Some(r) = &self.reason {
            text(out, ",\"reason\":", r);
        }
        if let Some(d) = &self.dead_letter {
            text(out, ",\"dead_letter\":{\"topic\":", &d.topic);
            number(out, ",\"partition\":", d.partition.into());
            number(out, ",\"offset\":", d.offset);
            out.push(b'}');
        }
        number(out, ",\"updated_at\":", self.updated_at);
        out.push(b'}');
    }
}

/// A record of [`JOBS_TOPIC`]: one state, or several packed.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Entry {
    /// One state (a compacted topic).
    One(Box<JobState>),
    /// Several (a topic that is not compacted).
    Many(Vec<JobState>),
}

/// Milliseconds since the epoch now.
pub(crate) fn now_ms() -> i64 {
    crate::time::forwarder::millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written JSON is serde's, byte for byte, with every optional field present or
    /// not and text that needs escaping.
    #[test]
    fn written_states_are_serdes_bytes() {
        let place = |t: &str| Place {
            topic: t.into(),
            partition: 3,
            offset: -1,
        };
        let full = JobState {
            id: "0192f0c4-\"quoted\"\n\u{1}é".into(),
            state: StateKind::Dead,
            place: place("jobs"),
            group: Some("g\\1".into()),
            attempts: 7,
            enqueued_at: Some(i64::MIN),
            started_at: Some(0),
            finished_at: Some(i64::MAX),
            until: Some(-5),
            last_error: Some("boom \"x\"\t\u{7f}".into()),
            reason: Some("exhausted".into()),
            dead_letter: Some(place("jobs.dlq")),
            updated_at: 1_767_225_600_000,
        };
        let bare = JobState {
            group: None,
            enqueued_at: None,
            started_at: None,
            finished_at: None,
            until: None,
            last_error: None,
            reason: None,
            dead_letter: None,
            state: StateKind::Waiting,
            ..full.clone()
        };
        for s in [&full, &bare] {
            let mut out = Vec::new();
            s.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
        let two = encode(&[full.clone(), bare.clone()], true, "");
        assert_eq!(
            serde_json::from_slice::<Vec<JobState>>(&two[0].value).unwrap(),
            vec![full, bare]
        );
    }

    /// States as large as they get (a 512-byte error of control characters, escaped six times
    /// over, long names) stay well under a broker's 1 MB per record, and every one is written.
    #[test]
    fn packed_records_stay_under_a_megabyte() {
        let big = JobState {
            id: "0192f0c4-5a1e-7000-8000-000000000000".into(),
            state: StateKind::Dead,
            place: Place {
                topic: "t".repeat(249),
                partition: 1,
                offset: 1,
            },
            group: Some("g".repeat(255)),
            attempts: 1,
            enqueued_at: Some(1),
            started_at: Some(1),
            finished_at: Some(1),
            until: None,
            last_error: Some("\u{1}".repeat(ERROR_BYTES)),
            reason: Some("failed".into()),
            dead_letter: None,
            updated_at: 1,
        };
        let states = vec![big; 1_200];
        let records = encode(&states, true, "");
        let mut read = 0;
        for r in &records {
            assert!(r.value.len() < 400 * 1024, "{} bytes", r.value.len());
            read += serde_json::from_slice::<Vec<JobState>>(&r.value)
                .unwrap()
                .len();
        }
        assert_eq!(read, 1_200);
    }

    #[test]
    fn ids_are_uuids_and_states_parse_back() {
        assert!(is_job_id(&conveyor_core::headers::new_message_id()));
        assert!(!is_job_id("hello"));
        assert!(!is_job_id("0192f0c4-5a1e-7000-8000-00000000000"));
        for k in StateKind::ALL {
            assert_eq!(StateKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(StateKind::parse("done"), None);
    }
}
