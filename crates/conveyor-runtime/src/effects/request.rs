//! Request/reply over the log: [`Client::request`] publishes a job carrying `reply_to` (this
//! client's reply topic) and `correlation_id` (the job's message id), then waits for the record a
//! worker publishes to the reply topic with that correlation id (a handler replies by returning
//! a value; see `conveyor_core::headers` for the reply's headers).
//!
//! # One reply topic per client
//! A [`Client`] (and its clones) opens one reply topic at its first request, not one per
//! request: `conveyor.replies.<random>` ([`REPLY_TOPIC_PREFIX`]), one partition, replies kept
//! for [`REPLY_RETENTION_MS`] (1 hour). One background task reads it from where it ended when
//! the client opened it (older replies are never taken) and hands each reply to the caller
//! waiting for its correlation id. Create one client per process and clone it.
//!
//! [`Client::with_reply_topic`] names the topic instead, e.g. a responses topic several
//! processes share (`laddr.responses`): each process reads all of it, in a consumer group of
//! its own, and takes only the correlation ids it is waiting for; the others' replies are
//! skipped and counted as [`RequestCounts::foreign`]. An existing topic is used as it is (any
//! partition count); a missing one is created with one partition and the 1-hour retention.
//!
//! # Callers that go, replies that come late
//! A caller that times out ([`Error::RequestTimeout`]) or is dropped (an HTTP client that
//! disconnects) removes its entry at once; a reply arriving for it later is dropped and counted
//! ([`RequestCounts::late`]), never kept. The ids of recent
//! callers (the last [`RECENT_WINDOW`], at most [`RECENT_MAX`]) are remembered, so a late
//! reply is told from another client's; a second reply to an answered request (the worker ran
//! the job twice: delivery is at-least-once) is counted as [`RequestCounts::duplicate`]. A
//! request the worker dead-lettered is answered with `reply_error` and fails with
//! [`Error::RequestFailed`].
//!
//! # Reply topics outlive their processes
//! The backend contract has no topic deletion, so each run of a process that names no reply
//! topic leaves one `conveyor.replies.<random>` topic behind (empty after the retention).
//! Remove them with the broker's tools (Kafka: `kafka-topics.sh --delete --topic
//! 'conveyor.replies.*'`), or name the topic with [`Client::with_reply_topic`] so that restarts
//! reuse it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conveyor_core::headers::{self, CORRELATION_ID, REPLY_ERROR, REPLY_TO};
use conveyor_core::{
    Backend, ConsumedRecord, Error, Headers, Poll, Result, SubscribeOptions, Subscription,
    TopicSpec,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{Client, NewJob};

/// The name of a client's own reply topic: this prefix and 12 random hex digits.
pub const REPLY_TOPIC_PREFIX: &str = conveyor_core::topic::REPLY_TOPIC_PREFIX;
/// Retention of a reply topic the client creates: 1 hour (a reply matters only while its
/// caller waits).
pub const REPLY_RETENTION_MS: i64 = 3600 * 1000;
/// How long the ids of callers that timed out, left or were answered are remembered (to count
/// a later reply as late or duplicate rather than foreign): 10 minutes.
pub const RECENT_WINDOW: Duration = Duration::from_secs(600);
/// At most this many such ids are remembered (the oldest are forgotten first).
pub const RECENT_MAX: usize = 100_000;

/// Replies read from the reply topic per poll.
const POLL_MAX: usize = 1000;

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The correlation id: the request's message id.
    pub correlation_id: String,
    /// The reply's value: the JSON of the handler's value (`null` for `()`); empty when the
    /// request failed.
    pub value: Bytes,
    /// The reply record's headers.
    pub headers: Headers,
    /// Where the reply was read: the reply topic.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

impl Reply {
    fn from_record(correlation_id: String, r: ConsumedRecord) -> Self {
        Reply {
            correlation_id,
            value: r.value,
            headers: r.headers,
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
        }
    }

    /// The value decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.value)
    }

    /// The reply's content type; `None` means JSON.
    pub fn content_type(&self) -> Option<&str> {
        self.headers.get_str(headers::CONTENT_TYPE)
    }

    /// The worker's error when the request failed for good (`reply_error`).
    pub fn error(&self) -> Option<&str> {
        self.headers
            .get(REPLY_ERROR)
            .map(|v| std::str::from_utf8(v).unwrap_or("(not UTF-8)"))
    }
}

/// What a client's requests did so far ([`Client::request_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// The reply topic, once the first request opened it.
    pub reply_topic: Option<String>,
    /// Callers waiting for their reply now.
    pub pending: usize,
    /// Requests published.
    pub sent: u64,
    /// Requests answered by the handler's reply.
    pub replied: u64,
    /// Requests answered with `reply_error` (the worker dead-lettered them).
    pub failed: u64,
    /// Callers that gave up waiting (their timeout passed).
    pub timed_out: u64,
    /// Callers dropped while waiting (e.g. an HTTP client that disconnected).
    pub abandoned: u64,
    /// Replies for a caller that had gone (timed out or dropped): dropped.
    pub late: u64,
    /// Second replies to an answered request (the job ran twice): dropped.
    pub duplicate: u64,
    /// Replies for no request of this client (another client's, on a shared reply topic, or
    /// older than [`RECENT_WINDOW`]): skipped.
    pub foreign: u64,
    /// Errors reading the reply topic (each retried).
    pub reader_errors: u64,
}

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    replied: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    abandoned: AtomicU64,
    late: AtomicU64,
    duplicate: AtomicU64,
    foreign: AtomicU64,
    reader_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// How a recent caller ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It got its reply.
    Answered,
    /// It timed out or was dropped.
    Gone,
}

/// The ids of recent callers, bounded by [`RECENT_WINDOW`] and [`RECENT_MAX`].
#[derive(Debug, Default)]
struct Recent {
    ended: HashMap<String, Ended>,
    order: VecDeque<(Instant, String)>,
}

impl Recent {
    fn insert(&mut self, id: &str, how: Ended) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < RECENT_WINDOW && self.order.len() < RECENT_MAX {
                break;
            }
            let (_, old) = self.order.pop_front().expect("front");
            self.ended.remove(&old);
        }
        self.ended.insert(id.to_owned(), how);
        self.order.push_back((now, id.to_owned()));
    }
}

/// What the callers and the reader share.
#[derive(Debug, Default)]
struct Shared {
    /// Correlation id -> the waiting caller.
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    recent: Mutex<Recent>,
    stats: Stats,
}

impl Shared {
    fn end(&self, id: &str, how: Ended) {
        self.recent.lock().expect("recent").insert(id, how);
    }

    /// Hands a reply to its caller, or counts why nobody takes it.
    fn deliver(&self, r: ConsumedRecord) {
        let Some(id) = r.headers.get_str(CORRELATION_ID).map(str::to_owned) else {
            bump(&self.stats.foreign);
            return;
        };
        let waiting = self.pending.lock().expect("pending").remove(&id);
        match waiting {
            Some(tx) => {
                if tx.send(Reply::from_record(id.clone(), r)).is_err() {
                    // the caller went between its last look and now
                    bump(&self.stats.late);
                    self.end(&id, Ended::Gone);
                }
            }
            None => {
                let ended = self.recent.lock().expect("recent").ended.get(&id).copied();
                match ended {
                    Some(Ended::Gone) => bump(&self.stats.late),
                    Some(Ended::Answered) => bump(&self.stats.duplicate),
                    None => bump(&self.stats.foreign),
                }
            }
        }
    }
}

/// A client's reply topic: its name, the shared state, and the reader once opened.
pub(crate) struct Replies {
    /// The name asked for with [`Client::with_reply_topic`]; `None`: a random one.
    name: Option<String>,
    shared: Arc<Shared>,
    inbox: tokio::sync::OnceCell<Inbox>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("topic", &self.inbox.get().map(|i| &i.topic))
            .field("pending", &self.shared.pending.lock().map(|p| p.len()).ok())
            .finish()
    }
}

impl Replies {
    pub(crate) fn new(name: Option<String>) -> Self {
        Replies {
            name,
            shared: Arc::default(),
            inbox: tokio::sync::OnceCell::new(),
        }
    }

    async fn open(&self, backend: &Arc<dyn Backend>) -> Result<&Inbox> {
        self.inbox
            .get_or_try_init(|| {
                Inbox::open(
                    Arc::clone(backend),
                    self.name.clone(),
                    Arc::clone(&self.shared),
                )
            })
            .await
    }

    fn counts(&self) -> RequestCounts {
        let s = &self.shared.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts {
            reply_topic: self.inbox.get().map(|i| i.topic.clone()),
            pending: self.shared.pending.lock().expect("pending").len(),
            sent: n(&s.sent),
            replied: n(&s.replied),
            failed: n(&s.failed),
            timed_out: n(&s.timed_out),
            abandoned: n(&s.abandoned),
            late: n(&s.late),
            duplicate: n(&s.duplicate),
            foreign: n(&s.foreign),
            reader_errors: n(&s.reader_errors),
        }
    }
}

/// The open reply topic; dropping it (with the last clone of its client) stops the reader.
struct Inbox {
    topic: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The spec of a reply topic the client creates: one partition, [`REPLY_RETENTION_MS`].
pub fn reply_topic_spec(name: impl Into<String>) -> TopicSpec {
    let mut spec = TopicSpec::new(name, 1);
    spec.retention_ms = Some(REPLY_RETENTION_MS);
    spec
}

fn random_suffix() -> String {
    headers::new_message_id().replace('-', "")[20..].to_owned()
}

impl Inbox {
    async fn open(
        backend: Arc<dyn Backend>,
        name: Option<String>,
        shared: Arc<Shared>,
    ) -> Result<Inbox> {
        let topic = name.unwrap_or_else(|| format!("{REPLY_TOPIC_PREFIX}{}", random_suffix()));
        // replies written to another of conveyor's own topics would be read as its records
        conveyor_core::topic::validate_reply_topic(&topic)?;
        let info = match backend.describe_topic(&topic).await? {
            Some(info) => info,
            None => backend.create_topic(&reply_topic_spec(&topic)).await?,
        };
        // replies stored before this client opened the topic are not for it
        let from: HashMap<i32, i64> = info
            .partitions
            .iter()
            .map(|p| (p.partition, p.high))
            .collect();
        // a group of its own: this client reads every partition, whoever else reads the topic
        let options = SubscribeOptions::new(
            format!("conveyor.replies.reader.{}", random_suffix()),
            [topic.clone()],
        );
        let sub = backend.subscribe(options.clone()).await?;
        let reader = tokio::spawn(read(backend, options, sub, from, shared));
        Ok(Inbox { topic, reader })
    }
}

/// The reader: hands each reply of the topic (from `from`) to its caller until the backend closes.
async fn read(
    backend: Arc<dyn Backend>,
    options: SubscribeOptions,
    mut sub: Box<dyn Subscription>,
    mut from: HashMap<i32, i64>,
    shared: Arc<Shared>,
) {
    loop {
        match sub.poll(POLL_MAX, Duration::from_millis(500)).await {
            Ok(Poll::Records(records)) => {
                for r in records {
                    let next = from.entry(r.partition).or_insert(0);
                    // a subscription started again re-reads from the start
                    if r.offset < *next {
                        continue;
                    }
                    *next = r.offset + 1;
                    shared.deliver(r);
                }
            }
            Ok(Poll::Rebalance { .. } | Poll::Idle) => {}
            Err(Error::Closed) => break,
            Err(e) => {
                bump(&shared.stats.reader_errors);
                tracing::warn!(error = %e, topic = %options.topics[0], "reading the reply topic failed; subscribing again in 500 ms (waiting requests time out if it goes on)");
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop(sub);
                sub = loop {
                    match backend.subscribe(options.clone()).await {
                        Ok(s) => break s,
                        Err(Error::Closed) => return close(&shared),
                        Err(e) => {
                            bump(&shared.stats.reader_errors);
                            tracing::warn!(error = %e, "subscribing to the reply topic failed; trying again in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
            }
        }
    }
    close(&shared);
}

/// The backend closed: every waiting caller learns it now instead of at its timeout.
fn close(shared: &Shared) {
    shared.pending.lock().expect("pending").clear();
}

/// A caller's entry in the pending map; dropping it before the end removes the entry.
struct Waiter<'a> {
    shared: &'a Shared,
    id: String,
    rx: oneshot::Receiver<Reply>,
    /// Set once the caller ended (answered, timed out, or never sent).
    ended: bool,
}

impl<'a> Waiter<'a> {
    fn register(shared: &'a Shared, id: &str) -> Result<Self> {
        let (tx, rx) = oneshot::channel();
        let mut pending = shared.pending.lock().expect("pending");
        if pending.contains_key(id) {
            return Err(Error::InvalidArgument(format!(
                "a request with message id `{id}` is already waiting for its reply; give each request its own id"
            )));
        }
        pending.insert(id.to_owned(), tx);
        Ok(Waiter {
            shared,
            id: id.to_owned(),
            rx,
            ended: false,
        })
    }

    /// Removes the entry; returns the reply when the reader handed it over meanwhile.
    fn leave(&mut self) -> Option<Reply> {
        self.ended = true;
        self.shared
            .pending
            .lock()
            .expect("pending")
            .remove(&self.id);
        self.rx.try_recv().ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.leave();
            bump(&self.shared.stats.abandoned);
            self.shared.end(&self.id, Ended::Gone);
        }
    }
}

impl Client {
    /// Uses `topic` as this client's reply topic instead of a random
    /// `conveyor.replies.<random>` one (see the [module docs](crate::effects::request)): processes may
    /// share it, each taking only its own replies. Call it before the first request. A topic
    /// under `conveyor.*` other than `conveyor.replies.*` (conveyor's own) makes every request
    /// fail with `Error::ReservedTopic`.
    pub fn with_reply_topic(mut self, topic: impl Into<String>) -> Self {
        self.replies = Arc::new(Replies::new(Some(topic.into())));
        self
    }

    /// Publishes `job` to `topic` as a request and waits up to `timeout` (from this call) for
    /// its reply. The job's message id (set with [`NewJob::with_id`], else a fresh one) is the
    /// correlation id. The first request opens the reply topic (creating it when missing).
    ///
    /// Fails with [`Error::RequestTimeout`] when no reply came in time (the request stays in
    /// the topic and may still run), [`Error::RequestFailed`] when the worker dead-lettered
    /// it, [`Error::InvalidArgument`] when a request with the same id is already waiting,
    /// [`Error::ReservedTopic`] for one of conveyor's own topics (`conveyor.*`, as topic or as
    /// reply topic) and with the backend's error when the request cannot be published.
    ///
    /// ```no_run
    /// # async fn example(client: conveyor_runtime::Client) -> conveyor_core::Result<()> {
    /// use std::time::Duration;
    /// use conveyor_runtime::NewJob;
    ///
    /// let job = NewJob::json("price.quote", &serde_json::json!({ "sku": "A-1" })).unwrap();
    /// let reply = client.request("quotes", job, Duration::from_secs(5)).await?;
    /// let quote: serde_json::Value = reply.json().unwrap();
    /// # let _ = quote;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(&self, topic: &str, job: NewJob, timeout: Duration) -> Result<Reply> {
        // `Duration::MAX` ("forever") would overflow the clock: a year is forever enough
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        let id = job.id.clone().unwrap_or_else(headers::new_message_id);
        let timed_out = |shared: &Shared| {
            bump(&shared.stats.timed_out);
            crate::observation::metrics::events::request("timeout");
            shared.end(&id, Ended::Gone);
            Error::RequestTimeout {
                topic: topic.to_owned(),
                correlation_id: id.clone(),
                waited_ms: timeout.as_millis() as u64,
            }
        };
        let shared = &*self.replies.shared;
        let inbox = match tokio::time::timeout_at(deadline, self.replies.open(self.backend())).await
        {
            Ok(inbox) => inbox?,
            Err(_) => return Err(timed_out(shared)),
        };
        let job = job
            .with_id(id.clone())
            .with_header(REPLY_TO, inbox.topic.clone())
            .with_header(CORRELATION_ID, id.clone());
        // registered before publishing: the reply may come before the publish returns
        let mut waiter = Waiter::register(shared, &id)?;
        match tokio::time::timeout_at(deadline, self.enqueue(topic, job)).await {
            Ok(Ok(_)) => bump(&shared.stats.sent),
            Ok(Err(e)) => {
                waiter.leave();
                return Err(e);
            }
            Err(_) => {
                waiter.leave();
                return Err(timed_out(shared));
            }
        }
        let reply = match tokio::time::timeout_at(deadline, &mut waiter.rx).await {
            Ok(Ok(reply)) => {
                waiter.ended = true;
                reply
            }
            // the reader stopped: the backend closed
            Ok(Err(_)) => {
                waiter.leave();
                return Err(Error::Closed);
            }
            Err(_) => match waiter.leave() {
                Some(reply) => reply,
                None => return Err(timed_out(shared)),
            },
        };
        shared.end(&id, Ended::Answered);
        match reply.error() {
            Some(error) => {
                bump(&shared.stats.failed);
                crate::observation::metrics::events::request("failed");
                Err(Error::RequestFailed {
                    topic: topic.to_owned(),
                    correlation_id: id,
                    error: error.to_owned(),
                })
            }
            None => {
                bump(&shared.stats.replied);
                crate::observation::metrics::events::request("replied");
                Ok(reply)
            }
        }
    }

    /// Opens the reply topic now (the first request does otherwise) and returns its name.
    pub async fn reply_topic(&self) -> Result<String> {
        Ok(self.replies.open(self.backend()).await?.topic.clone())
    }

    /// What this client's requests did so far: sent, replied, timed out, replies dropped.
    pub fn request_counts(&self) -> RequestCounts {
        self.replies.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_of_recent_callers_are_bounded() {
        let mut r = Recent::default();
        for i in 0..RECENT_MAX + 10 {
            r.insert(&i.to_string(), Ended::Gone);
        }
        assert_eq!(r.ended.len(), RECENT_MAX);
        assert_eq!(r.order.len(), RECENT_MAX);
        // the oldest went first
        assert!(!r.ended.contains_key("0") && r.ended.contains_key(&(RECENT_MAX + 9).to_string()));
    }

    #[test]
    fn a_reply_nobody_waits_for_is_counted_not_kept() {
        let shared = Shared::default();
        let record = |id: &str| ConsumedRecord {
            topic: "r".into(),
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: None,
            value: Bytes::from_static(b"1"),
            headers: [(CORRELATION_ID, id.to_owned())].into_iter().collect(),
        };
        shared.end("gone", Ended::Gone);
        shared.end("answered", Ended::Answered);
        for id in ["gone", "answered", "stranger"] {
            shared.deliver(record(id));
        }
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &shared.stats;
        assert_eq!((n(&s.late), n(&s.duplicate), n(&s.foreign)), (1, 1, 1));
        assert!(shared.pending.lock().unwrap().is_empty());
    }
}
