//! What an attempt produces besides its outcome: the records its handler emitted
//! ([`crate::Job::emit`]) and its reply to a request ([`crate::Job::reply`]), and how a worker
//! publishes them.
//!
//! Outputs count only for an attempt that finished as done. A non-transactional worker
//! publishes them from the attempt's task before the job's offset can be committed (at least
//! once: a crash between the two publishes them again with the retry). A transactional worker
//! keeps them with the finished offset and hands them to the backend's
//! [`TransactionalCommit`](conveyor_core::TransactionalCommit) together with that offset, so
//! they become visible exactly when the offset commits.
//!
//! A reply goes to the request's `reply_to` topic with the request's `correlation_id` (or, when
//! a producer set none, its message id), a message id of its own and the request's job type. A
//! request that is dead-lettered gets a reply too, with `reply_error`, so the caller learns at
//! once instead of waiting for its timeout.

use bytes::Bytes;
use conveyor_core::headers::{self, JobMeta};
use conveyor_core::{Backend, ConsumedRecord, Headers, Record, Result};

/// An attempt's outputs, filled by its handler.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    /// Emitted records with their topics, in emit order.
    pub(crate) records: Vec<(String, Record)>,
    /// The reply's value (JSON), when the handler gave one.
    pub(crate) reply: Option<Bytes>,
    /// No reply at all ([`crate::Job::skip_reply`]).
    pub(crate) no_reply: bool,
}

impl Outputs {
    /// What a done attempt of `request` publishes: the emitted records, then the reply when the
    /// job is a request (`null` when the handler gave no value).
    pub(crate) fn finish(self, request: &ConsumedRecord) -> Vec<(String, Record)> {
        let mut out = self.records;
        if !self.no_reply {
            let value = self.reply.unwrap_or_else(|| Bytes::from_static(b"null"));
            out.extend(reply_record(request, value, None));
        }
        out
    }
}

/// The reply to `request` (`None` when it is not a request): `value`, or an empty value with
/// `reply_error` when the request failed for good. A `reply_to` naming one of conveyor's own
/// topics other than a reply topic (`conveyor.control`, `conveyor.idempotency`, ...: a producer
/// wrote it, conveyor's clients never do) gets no reply, with a warning: the reply would be read
/// as one of that topic's records.
pub(crate) fn reply_record(
    request: &ConsumedRecord,
    value: Bytes,
    error: Option<&str>,
) -> Option<(String, Record)> {
    let to = request
        .headers
        .get_str(headers::REPLY_TO)
        .filter(|t| !t.is_empty())?;
    if let Err(e) = conveyor_core::topic::validate_reply_topic(to) {
        tracing::warn!(topic = %request.topic, partition = request.partition, offset = request.offset, reply_to = to, error = %e, "no reply sent: the request's reply_to is not a topic replies may go to");
        return None;
    }
    let correlation = request
        .headers
        .get(headers::CORRELATION_ID)
        .or_else(|| request.headers.get(headers::MESSAGE_ID))
        .cloned()
        .unwrap_or_default();
    let job_type = request
        .headers
        .get_str(headers::JOB_TYPE)
        .unwrap_or_default();
    let mut h = Headers::new();
    JobMeta::new(job_type).write_to(&mut h);
    h.insert(headers::CORRELATION_ID, correlation);
    let value = match error {
        Some(e) => {
            h.insert(headers::REPLY_ERROR, e.to_owned());
            Bytes::new()
        }
        None => value,
    };
    Some((
        to.to_owned(),
        Record {
            key: None,
            value,
            headers: h,
            partition: None,
            timestamp: None,
        },
    ))
}

/// Publishes `records` in order, one publish per run of records of one topic.
pub(crate) async fn publish_all(
    backend: &dyn Backend,
    records: Vec<(String, Record)>,
) -> Result<()> {
    let mut runs: Vec<(String, Vec<Record>)> = Vec::new();
    for (topic, r) in records {
        match runs.last_mut() {
            Some((t, rs)) if *t == topic => rs.push(r),
            _ => runs.push((topic, vec![r])),
        }
    }
    for (topic, rs) in runs {
        backend.publish(&topic, rs).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> ConsumedRecord {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(*k, v.to_string());
        }
        ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            key: None,
            value: Bytes::from_static(b"{}"),
            headers: h,
            timestamp: 0,
        }
    }

    #[test]
    fn a_reply_pairs_with_its_request_and_a_plain_job_gets_none() {
        let r = request(&[
            (headers::MESSAGE_ID, "m1"),
            (headers::JOB_TYPE, "add"),
            (headers::REPLY_TO, "replies.a"),
            (headers::CORRELATION_ID, "c1"),
        ]);
        let (to, rec) = reply_record(&r, Bytes::from_static(b"3"), None).unwrap();
        assert_eq!(to, "replies.a");
        assert_eq!(rec.value, Bytes::from_static(b"3"));
        assert_eq!(rec.headers.get_str(headers::CORRELATION_ID), Some("c1"));
        assert_eq!(rec.headers.get_str(headers::JOB_TYPE), Some("add"));
        assert_ne!(rec.headers.get_str(headers::MESSAGE_ID), Some("m1"));
        assert_eq!(rec.headers.get_str(headers::REPLY_ERROR), None);

        let (_, failed) = reply_record(&r, Bytes::from_static(b"3"), Some("boom")).unwrap();
        assert!(failed.value.is_empty());
        assert_eq!(failed.headers.get_str(headers::REPLY_ERROR), Some("boom"));

        let no_correlation = request(&[(headers::MESSAGE_ID, "m2"), (headers::REPLY_TO, "r")]);
        let (_, rec) = reply_record(&no_correlation, Bytes::new(), None).unwrap();
        assert_eq!(rec.headers.get_str(headers::CORRELATION_ID), Some("m2"));

        assert!(
            reply_record(&request(&[(headers::MESSAGE_ID, "m3")]), Bytes::new(), None).is_none()
        );
        // conveyor's own topics take replies only when they are reply topics
        for (to, replied) in [
            ("conveyor.replies.0a1b2c", true),
            ("conveyor.idempotency", false),
            ("conveyor.control", false),
        ] {
            let r = request(&[(headers::MESSAGE_ID, "m4"), (headers::REPLY_TO, to)]);
            assert_eq!(
                reply_record(&r, Bytes::new(), None).is_some(),
                replied,
                "{to}"
            );
        }
        let outputs = Outputs::default();
        assert!(outputs.finish(&request(&[])).is_empty());
    }
}
