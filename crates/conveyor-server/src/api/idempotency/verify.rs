//! The checks an answer read from [`IDEMPOTENCY_TOPIC`](super::IDEMPOTENCY_TOPIC) passes before
//! it is given again: an API process trusts only what it could have written itself.
//!
//! An answer tells a client "your job is stored": given for a job that is not there, the client
//! stops retrying and the job is lost. No way in writes jobs to `conveyor.*` topics, and the log
//! reader ([`conveyor_runtime::entry_log`]) skips every record a job path wrote (they carry job
//! headers: a schedule's tick, a replayed dead letter, a reply), so what is left to doubt is a
//! record written to the topic directly (by hand, by another tool) or one naming a job that is
//! gone (its topic deleted and created again). Two checks:
//! - **when it is read** ([`named_jobs`]): a `201` whose body names, for its single job or for
//!   each job of its batch, the answer's own topic, a partition and an offset of at least 0 and
//!   the message id the request's job gets ([`super::message_id`] of topic, key, fingerprint
//!   and place in the batch). Anything else is skipped with a warning and never answers.
//! - **before it is given again** ([`stored`]): each job is in the log where the answer says,
//!   the record at that partition and offset carrying that message id. One read per partition
//!   the answer names (a batch's jobs of one partition are read in one go), once per answer and
//!   process: a repeat is rare, and an answer checked once is not checked again. An offset the
//!   topic no longer retains (below its low watermark) cannot be checked and fails too: a
//!   forged answer could name one, and storing the job again (with the same message id, a
//!   duplicate an inbox drops) is the safe side. A topic or partition that does not exist, an
//!   offset never written, or another record (or none) at the offset fails: the answer is
//!   forgotten with a warning and the request runs as a first one, storing its job with its
//!   usual message id.

use std::collections::BTreeMap;

use conveyor_core::{headers, Backend, Error};
use serde_json::Value;

use super::Entry;

/// Records one read asks for when a batch's jobs are checked.
const READ_CHUNK: i64 = 1000;

/// A job an answer names: where it is stored and its message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Named {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) id: String,
}

/// The jobs a well-formed answer names, or why it is not one (see the module docs).
pub(super) fn named_jobs(entry: &Entry) -> Result<Vec<Named>, String> {
    if entry.status != 201 {
        return Err(format!("its status is {}, not 201", entry.status));
    }
    let body: Value =
        serde_json::from_str(&entry.body).map_err(|e| format!("its body is not JSON ({e})"))?;
    let one = |job: &Value, index: Option<usize>| -> Result<Named, String> {
        let want = super::message_id(&entry.topic, &entry.key, &entry.fingerprint, index);
        let id = job["id"].as_str().unwrap_or_default();
        if id != want {
            return Err(format!(
                "it names message id `{id}`, not the one its request's job gets ({want})"
            ));
        }
        if job["topic"].as_str() != Some(entry.topic.as_str()) {
            return Err(format!(
                "it names topic {}, not its own `{}`",
                job["topic"], entry.topic
            ));
        }
        let partition = job["partition"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p >= 0);
        let offset = job["offset"].as_i64().filter(|o| *o >= 0);
        match (partition, offset) {
            (Some(partition), Some(offset)) => Ok(Named {
                partition,
                offset,
                id: want,
            }),
            _ => Err("it names no partition and offset".into()),
        }
    };
    match body.get("jobs") {
        Some(jobs) => {
            let jobs = jobs
                .as_array()
                .filter(|j| !j.is_empty())
                .ok_or("its `jobs` is not a list of jobs")?;
            jobs.iter()
                .enumerate()
                .map(|(i, job)| one(job, Some(i)))
                .collect()
        }
        None => one(&body, None).map(|n| vec![n]),
    }
}

/// Whether every job in `jobs` is stored in `topic` where named (`Ok(Err(why))` when one is
/// not); an error when the log cannot be read, which decides nothing. One read per partition
/// named (and chunk of [`READ_CHUNK`] offsets); the topic is described only when a read does
/// not start at the first offset asked for (retention, or nothing there).
pub(super) async fn stored(
    backend: &dyn Backend,
    topic: &str,
    jobs: &[Named],
) -> conveyor_core::Result<Result<(), String>> {
    // per partition, the offsets named, with the id each must carry
    let mut wanted: BTreeMap<i32, BTreeMap<i64, &str>> = BTreeMap::new();
    for j in jobs {
        wanted
            .entry(j.partition)
            .or_default()
            .insert(j.offset, &j.id);
    }
    for (partition, mut offsets) in wanted {
        while let (Some((&first, _)), Some((&last, _))) =
            (offsets.first_key_value(), offsets.last_key_value())
        {
            let span = (last - first + 1).min(READ_CHUNK) as usize;
            let records = match backend.fetch(topic, partition, first, span).await {
                Ok(records) => records,
                Err(Error::UnknownTopic(_)) => {
                    return Ok(Err(format!("its topic `{topic}` does not exist")))
                }
                Err(Error::UnknownPartition { .. }) => {
                    return Ok(Err(format!("`{topic}` has no partition {partition}")))
                }
                Err(e) => return Err(e),
            };
            if records.first().is_none_or(|r| r.offset > first) {
                // the read did not start at `first`: below the low watermark (retention
                // removed it, or a forged answer names it: it cannot be checked), past the end
                // (never written), or a gap
                let Some(w) = backend
                    .describe_topic(topic)
                    .await?
                    .and_then(|t| t.partitions.get(partition as usize).copied())
                else {
                    return Ok(Err(format!("its topic `{topic}` does not exist")));
                };
                if first >= w.high {
                    return Ok(Err(format!(
                        "{topic}/{partition}/{first} was never written (the partition ends at {})",
                        w.high
                    )));
                }
                if first < w.low {
                    return Ok(Err(format!(
                        "{topic}/{partition}/{first} is no longer retained (the partition starts at {}): it cannot be checked",
                        w.low
                    )));
                }
                if records.is_empty() {
                    return Err(Error::Broker(format!(
                        "{topic}/{partition} could not be read from offset {first} to check an idempotency answer"
                    )));
                }
                return Ok(Err(format!("{topic}/{partition}/{first} holds no record")));
            }
            let end = records.last().map_or(first, |r| r.offset);
            for r in &records {
                let Some(id) = offsets.remove(&r.offset) else {
                    continue;
                };
                let found = r.headers.get_str(headers::MESSAGE_ID);
                if found != Some(id) {
                    return Ok(Err(format!(
                        "{topic}/{partition}/{} holds another job (message id {})",
                        r.offset,
                        found.unwrap_or("none")
                    )));
                }
            }
            if let Some((&o, _)) = offsets.first_key_value().filter(|(o, _)| **o <= end) {
                return Ok(Err(format!("{topic}/{partition}/{o} holds no record")));
            }
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(body: Value) -> Entry {
        Entry {
            topic: "t".into(),
            key: "k".into(),
            fingerprint: "f".into(),
            status: 201,
            body: body.to_string(),
            at_ms: 0,
            verified: false,
        }
    }

    fn job(index: Option<usize>, partition: i64, offset: i64) -> Value {
        json!({"id": super::super::message_id("t", "k", "f", index), "topic": "t", "partition": partition, "offset": offset})
    }

    #[test]
    fn only_a_201_naming_the_requests_own_ids_and_places_is_an_answer() {
        let single = named_jobs(&entry(job(None, 2, 7))).unwrap();
        assert_eq!((single[0].partition, single[0].offset), (2, 7));
        let batch = named_jobs(&entry(
            json!({"jobs": [job(Some(0), 0, 1), job(Some(1), 1, 1)]}),
        ));
        assert_eq!(batch.unwrap().len(), 2);
        let mut bad: Vec<(&str, Entry)> = vec![
            ("another id", entry(job(Some(0), 2, 7))),
            (
                "batch ids out of place",
                entry(json!({"jobs": [job(Some(1), 0, 1)]})),
            ),
            ("empty batch", entry(json!({"jobs": []}))),
            ("another topic", {
                let mut j = job(None, 2, 7);
                j["topic"] = json!("u");
                entry(j)
            }),
            ("negative offset", entry(job(None, 2, -1))),
            ("no partition", {
                let mut j = job(None, 2, 7);
                j["partition"] = Value::Null;
                entry(j)
            }),
            ("not JSON", {
                let mut e = entry(json!({}));
                e.body = "{".into();
                e
            }),
        ];
        let mut not_201 = entry(job(None, 2, 7));
        not_201.status = 200;
        bad.push(("status 200", not_201));
        for (what, e) in bad {
            assert!(named_jobs(&e).is_err(), "{what}");
        }
    }
}
