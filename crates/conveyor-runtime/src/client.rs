//! The typed client: enqueue one job or a batch, and learn where each landed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use conveyor_core::headers::{self, JobMeta};
use conveyor_core::{Backend, Headers, Position, Record, Result};
use serde::Serialize;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The job type, selecting the handler.
    pub job_type: String,
    /// The payload bytes.
    pub payload: Bytes,
    /// The payload's MIME type; `None` means JSON.
    pub content_type: Option<String>,
    /// The key: jobs with the same key run one at a time, in order.
    pub key: Option<Bytes>,
    /// Extra headers (conveyor's own names are overwritten by the job's metadata).
    pub headers: Headers,
    /// The message id; `None`: a fresh UUIDv7. Set it to make a repeated enqueue (a retry after
    /// a timeout, an outbox relay running twice) recognisable as the same job: an inbox
    /// (`conveyor-postgres`) runs a message id once.
    pub id: Option<String>,
}

impl NewJob {
    /// A job with a JSON payload.
    pub fn json<T: Serialize + ?Sized>(
        job_type: impl Into<String>,
        payload: &T,
    ) -> serde_json::Result<Self> {
        Ok(Self::raw(job_type, serde_json::to_vec(payload)?, None))
    }

    /// A job whose payload is already encoded; `content_type: None` means it is JSON.
    pub fn raw(
        job_type: impl Into<String>,
        payload: impl Into<Bytes>,
        content_type: Option<String>,
    ) -> Self {
        NewJob {
            job_type: job_type.into(),
            payload: payload.into(),
            content_type,
            key: None,
            headers: Headers::new(),
            id: None,
        }
    }

    /// Sets the message id (see [`NewJob::id`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Runs the job no earlier than `delay` from now.
    pub fn process_in(self, delay: Duration) -> Self {
        self.process_at(SystemTime::now() + delay)
    }

    /// Runs the job no earlier than `at` (kept to the millisecond, rounded up).
    pub fn process_at(self, at: SystemTime) -> Self {
        self.with_time_header(headers::DUE_AT, ceil_millis(at))
    }

    /// Dead-letters the job (reason `deadline`) instead of running it after `at`; a handler
    /// still running then is cancelled.
    pub fn deadline(self, at: SystemTime) -> Self {
        self.with_time_header(headers::DEADLINE, at)
    }

    /// Cancels an attempt that runs longer than `timeout` (it fails and is retried), whatever the
    /// worker's own timeouts (a webhook route's included); at most one day counts.
    pub fn timeout(self, timeout: Duration) -> Self {
        let ms = timeout.as_millis().max(1).to_string();
        self.with_header(headers::TIMEOUT_MS, ms)
    }

    /// Makes the job unique: while it holds `key` (for `hold` from now) no other job of the
    /// topic with that key runs. Where the backend can tell at enqueue time (embedded) a
    /// duplicate is refused with [`Error::DuplicateJob`](conveyor_core::Error::DuplicateJob);
    /// elsewhere (Kafka) it is stored and dropped before it runs. A unique job without a key is
    /// keyed by its unique key, so its duplicates share its partition.
    pub fn unique(self, key: impl Into<String>, hold: Duration) -> Self {
        let until = SystemTime::now() + hold;
        self.with_header(headers::UNIQUE_KEY.to_owned(), key.into())
            .with_time_header(headers::UNIQUE_UNTIL, until)
    }

    fn with_time_header(self, name: &str, at: SystemTime) -> Self {
        self.with_header(name.to_owned(), headers::format_time(at))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// Where an enqueued job landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The job's message id (UUIDv7).
    pub id: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// Enqueues jobs on a backend.
#[derive(Debug, Clone)]
pub struct Client {
    backend: Arc<dyn Backend>,
    producer: Option<String>,
    /// The reply topic of [`Client::request`] (`effects/request.rs`), shared by the clones.
    pub(crate) replies: Arc<crate::effects::request::Replies>,
    /// Job lookup: a `waiting` (or `delayed`) state for each job enqueued
    /// ([`Client::with_job_states`]).
    states: Option<crate::observation::job_states::EnqueueLog>,
}

/// A job as a record with its metadata (a fresh message id unless the job has one); returns
/// the id too.
pub(crate) fn job_record(job: NewJob, producer: Option<String>) -> (String, Record) {
    let mut meta = JobMeta::new(job.job_type);
    if let Some(id) = job.id {
        meta.message_id = Some(id);
    }
    meta.producer = producer;
    meta.content_type = job.content_type.filter(|c| c != headers::JSON);
    let id = meta.message_id.clone().expect("new job has an id");
    let mut h = job.headers;
    meta.write_to(&mut h);
    let key = job.key.or_else(|| h.get(headers::UNIQUE_KEY).cloned());
    hold_from_due_time(&mut h);
    (
        id,
        Record {
            key,
            value: job.payload,
            headers: h,
            partition: None,
            timestamp: None,
        },
    )
}

impl Client {
    /// A client on `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Client {
            backend,
            producer: None,
            replies: Arc::new(crate::effects::request::Replies::new(None)),
            states: None,
        }
    }

    /// Writes a `waiting` state (`delayed` for a job due later) for each job enqueued, in
    /// batches in the background, so `GET /v1/jobs/{id}` finds it before a worker takes it
    /// ([`crate::observation::job_states`]). The HTTP API's client does; without it a job shows up at its
    /// first worker state.
    pub fn with_job_states(mut self, log: crate::observation::job_states::EnqueueLog) -> Self {
        self.states = Some(log);
        self
    }

    /// Names the producer in each job's `producer` header.
    pub fn with_producer(mut self, producer: impl Into<String>) -> Self {
        self.producer = Some(producer.into());
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Turns a job into a record with a fresh message id; returns the id too.
    pub fn to_record(&self, job: NewJob) -> (String, Record) {
        job_record(job, self.producer.clone())
    }

    /// Enqueues one job; returns once it is durably stored. Refuses conveyor's own topics
    /// (`conveyor.*`).
    pub async fn enqueue(&self, topic: &str, job: NewJob) -> Result<Enqueued> {
        let mut v = self.enqueue_batch(topic, vec![job]).await?;
        Ok(v.remove(0))
    }

    /// Enqueues jobs in one publish (atomic on the embedded backend); returns where each landed,
    /// in order. Refuses conveyor's own topics (`conveyor.*`, [`Error::ReservedTopic`]).
    ///
    /// [`Error::ReservedTopic`]: conveyor_core::Error::ReservedTopic
    pub async fn enqueue_batch(&self, topic: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let (n, start) = (jobs.len(), std::time::Instant::now());
        let result = self.store_batch(topic, jobs).await;
        let backend = self.backend.name();
        crate::observation::metrics::events::enqueue_result(
            topic,
            backend,
            n,
            start.elapsed(),
            &result,
        );
        result
    }

    async fn store_batch(&self, topic: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        conveyor_core::topic::refuse_reserved(topic)?;
        let (ids, mut records): (Vec<String>, Vec<Record>) =
            jobs.into_iter().map(|j| self.to_record(j)).unzip();
        let due: Vec<Option<i64>> = match &self.states {
            Some(log) if log.tracks(topic) => records
                .iter()
                .map(|r| {
                    r.headers
                        .get_str(headers::DUE_AT)
                        .and_then(headers::parse_time)
                        .map(crate::time::forwarder::millis)
                })
                .collect(),
            _ => Vec::new(),
        };
        let span = crate::observation::trace::enabled()
            .then(|| publish_span(topic, &ids, &mut records))
            .flatten();
        let positions = self.publish_records(topic, &ids, records).await;
        if let Some(span) = span {
            span.end(positions.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        let positions = positions?;
        let enqueued: Vec<Enqueued> = ids
            .into_iter()
            .zip(positions)
            .map(|(id, p)| Enqueued {
                id,
                topic: topic.to_owned(),
                partition: p.partition,
                offset: p.offset,
            })
            .collect();
        if let Some(log) = self.states.as_ref().filter(|_| !due.is_empty()) {
            for (e, due) in enqueued.iter().zip(due) {
                let place = crate::observation::job_states::Place {
                    topic: e.topic.clone(),
                    partition: e.partition,
                    offset: e.offset,
                };
                log.enqueued(&e.id, place, due);
            }
        }
        Ok(enqueued)
    }

    async fn publish_records(
        &self,
        topic: &str,
        ids: &[String],
        records: Vec<Record>,
    ) -> Result<Vec<Position>> {
        let unique = records
            .iter()
            .any(|r| r.headers.get(headers::UNIQUE_KEY).is_some());
        let positions: Vec<Position> = match unique && self.backend.unique_claims().is_some() {
            false => self.backend.publish(topic, records).await?,
            // claimed and written in a task of their own: a caller that gives up (an HTTP
            // client disconnecting) cannot leave a claim without its job
            true => {
                let (client, topic, ids) = (self.clone(), topic.to_owned(), ids.to_vec());
                tokio::spawn(async move { client.claim_and_publish(&topic, &ids, records).await })
                    .await
                    .map_err(|e| {
                        conveyor_core::Error::Storage(format!("the enqueue failed: {e}"))
                    })??
            }
        };
        Ok(positions)
    }
}

/// A `publish {topic}` span under the first record's `traceparent`; every record that carried
/// that context (or none) carries the span's instead, so their handlers are its children.
fn publish_span(
    topic: &str,
    ids: &[String],
    records: &mut [Record],
) -> Option<crate::observation::trace::Span> {
    let parent = records
        .first()
        .and_then(|r| r.headers.get_str(headers::TRACEPARENT))
        .map(str::to_owned);
    let mut span = crate::observation::trace::start(
        format!("publish {topic}"),
        crate::observation::trace::SpanKind::Producer,
        parent.as_deref(),
    )?;
    span.set("messaging.system", "kafka");
    span.set("messaging.operation.type", "send");
    span.set("messaging.destination.name", topic.to_owned());
    span.set("messaging.batch.message_count", records.len() as u64);
    if let [id] = ids {
        span.set("messaging.message.id", id.clone());
    }
    let context = span.context().to_traceparent();
    for r in records.iter_mut() {
        if r.headers.get_str(headers::TRACEPARENT) == parent.as_deref() {
            r.headers.insert(headers::TRACEPARENT, context.clone());
        }
    }
    Some(span)
}

/// A claimed unique key: (key, job id).
type Claim = (String, String);

/// A delayed unique job holds its key from its due time: its hold is moved by its delay (as
/// Asynq's uniqueness of a scheduled task), so a duplicate enqueued while it waits is refused.
fn hold_from_due_time(h: &mut Headers) {
    let (Some(until), Some(due)) = (
        h.get_str(headers::UNIQUE_UNTIL)
            .and_then(headers::parse_time),
        h.get_str(headers::DUE_AT).and_then(headers::parse_time),
    ) else {
        return;
    };
    if let Ok(wait) = due.duration_since(SystemTime::now()) {
        if let Some(later) = until.checked_add(wait) {
            h.insert(headers::UNIQUE_UNTIL, headers::format_time(later));
        }
    }
}

impl Client {
    /// Claims the batch's unique keys, then publishes it; releases the claims if it fails.
    async fn claim_and_publish(
        &self,
        topic: &str,
        ids: &[String],
        records: Vec<Record>,
    ) -> Result<Vec<Position>> {
        if self.backend.describe_topic(topic).await?.is_none() {
            return Err(conveyor_core::Error::UnknownTopic(topic.to_owned()));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &records {
            if let Some(k) = r.headers.get_str(headers::UNIQUE_KEY) {
                if !seen.insert(k) {
                    return Err(conveyor_core::Error::InvalidArgument(format!(
                        "the batch holds two jobs with unique_key `{k}`: at most one of them could run"
                    )));
                }
            }
        }
        let claimed = self.claim_unique(topic, ids, &records).await?;
        match self.backend.publish(topic, records).await {
            Ok(p) => Ok(p),
            Err(e) => {
                self.release_unique(topic, &claimed).await;
                Err(e)
            }
        }
    }

    /// Claims the unique keys of the batch where the backend can (embedded); refuses the whole
    /// batch, releasing what it claimed, when one is held by another job.
    async fn claim_unique(
        &self,
        topic: &str,
        ids: &[String],
        records: &[Record],
    ) -> Result<Vec<Claim>> {
        let Some(index) = self.backend.unique_claims() else {
            return Ok(Vec::new());
        };
        let now = crate::time::forwarder::millis(SystemTime::now());
        let mut claimed: Vec<Claim> = Vec::new();
        for (id, r) in ids.iter().zip(records) {
            let Some(key) = r.headers.get_str(headers::UNIQUE_KEY) else {
                continue;
            };
            let until = r
                .headers
                .get_str(headers::UNIQUE_UNTIL)
                .and_then(headers::parse_time)
                .map_or(now, crate::time::forwarder::millis);
            match index.claim(topic, key, id, until, now).await {
                Ok(None) => claimed.push((key.to_owned(), id.clone())),
                Ok(Some((existing_id, held))) => {
                    self.release_unique(topic, &claimed).await;
                    let until = SystemTime::UNIX_EPOCH + Duration::from_millis(held.max(0) as u64);
                    return Err(conveyor_core::Error::DuplicateJob {
                        unique_key: key.to_owned(),
                        existing_id,
                        until: headers::format_time(until),
                    });
                }
                Err(e) => {
                    self.release_unique(topic, &claimed).await;
                    return Err(e);
                }
            }
        }
        Ok(claimed)
    }

    async fn release_unique(&self, topic: &str, claimed: &[Claim]) {
        let Some(index) = self.backend.unique_claims() else {
            return;
        };
        for (key, id) in claimed {
            if let Err(e) = index.release(topic, key, id).await {
                tracing::warn!(error = %e, key, "cannot release a unique key of a job that was not stored; it stays held until its hold ends");
            }
        }
    }
}

/// `t` rounded up to the next whole millisecond (time headers keep milliseconds; a due time
/// rounded down would let a job run early).
fn ceil_millis(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let sub = since.subsec_nanos() % 1_000_000;
    match sub {
        0 => t,
        n => t + Duration::from_nanos(u64::from(1_000_000 - n)),
    }
}
