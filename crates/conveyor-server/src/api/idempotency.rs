//! `Idempotency-Key` on enqueue: a client that repeats `POST /v1/topics/{topic}/jobs` (or
//! `/jobs/batch`) with the same key within the window gets the first answer again (same status,
//! same body: id, partition, offset) instead of a second job. Webhook-style clients retry after
//! a timeout without knowing whether the first request was stored; this makes that retry safe.
//!
//! # What is kept, and where
//! Answers live in a log topic, [`IDEMPOTENCY_TOPIC`] (one partition, retention = the window plus
//! an hour), one JSON record per first answer, keyed by topic and idempotency key. A record is
//! written after the job is stored and before the `201` is sent, so every `201` a client saw
//! survives a crash of the API process. Each process reads the topic from its start when it
//! opens it, then every [`REFRESH`] and before deciding that a key is new; records fold in log
//! order, **the first answer in the log wins** for its window. In memory each process keeps at
//! most `max_keys` answers and `max_bytes` bytes of them (oldest forgotten first; an answer
//! counts its topic, key, fingerprint and body, and [`ENTRY_OVERHEAD`] for its bookkeeping: a
//! batch's answer, with an id per job, weighs up to a thousand single ones) and forgets any
//! older than the window.
//!
//! # Keys, scope and fingerprints
//! A key is 1 to 255 bytes of printable ASCII, neither starting nor ending with a space
//! (`400 invalid_idempotency_key` otherwise). It is scoped to the topic: the same key on two
//! topics is two keys. A repeat must be the same request (route, topic and the JSON body,
//! compared after parsing, so whitespace and member order do not matter): the same key with
//! another request is `422 idempotency_key_reused`. Only successful answers (`201`) are
//! kept: a request refused with a 4xx or 5xx stored nothing, so its repeat runs again.
//!
//! # Concurrency and crashes
//! - **Two concurrent requests with one key in one process**: the second waits for the first
//!   and gets its answer (marked `Idempotent-Replayed: true`); one job is stored. The first runs
//!   in a task of its own, so a client that disconnects does not cut it between the job and
//!   its answer.
//! - **A crash between storing the job and storing its answer**: the job's message id is derived
//!   from the key ([`message_id`]: UUIDv5 of topic and key, and the job's index in a batch), so
//!   the repeat stores a second record **with the same message id**, which an inbox
//!   (`conveyor-postgres`) or any consumer deduplicating by message id drops.
//! - **Several API processes on Kafka**: each tails the topic, so a repeat sent to another
//!   process after the first answer was sent gets that answer (each process reads the topic
//!   to its end before treating a key as new). Two *concurrent* first requests in two processes
//!   race: both store a job (with the same message id, see above) and both answers are
//!   logged; every later repeat gets the one logged first. The same holds for two processes
//!   on one embedded data folder, which conveyor does not support anyway.
//! - A key forgotten early (more than `max_keys` answers, or `max_bytes` of them, within the
//!   window) behaves like a crash between job and answer: a repeat stores a second record with
//!   the same message id (a duplicate an inbox drops, never a lost job). Forgetting is counted
//!   ([`Idempotency::forgotten_early`]) and logged as a warning naming the bound.
//!
//! # Answers it did not write
//! An answer given again tells the client its job is stored, so only answers this API could
//! have written count (`idempotency/verify.rs`): a record carrying a job's headers (a job some way in wrote
//! to the topic, such as a schedule's tick before schedules refused `conveyor.*`) or one that is
//! not a `201` naming the message ids the request's jobs get is skipped when read, with a
//! warning; before an answer is given again, the first time in a process, its jobs are read
//! where it says they are stored. An answer whose job is not there is forgotten, with a
//! warning, and the request runs as a first one (its job stored with its usual message id);
//! its own answer is the one given from then on. A process that reads the log from its start
//! later meets the forgotten answer first again, checks it again and stores the job again,
//! with the same message id.

mod verify;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use conveyor_core::{Backend, Error, Record, TopicSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;

/// The topic holding the first answers.
pub const IDEMPOTENCY_TOPIC: &str = "conveyor.idempotency";

/// The request header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// The response header marking an answer given again: `Idempotent-Replayed: true`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// How long a first answer is given again unless configured: 24 hours
/// (`api.idempotency_window_ms`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How many answers a process keeps in memory unless configured: 100,000
/// (`api.idempotency_max_keys`).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How many bytes of answers a process keeps in memory unless configured: 64 MiB
/// (`api.idempotency_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes an answer counts beyond its strings: its map entry, its place in the order, the
/// copies of its scope.
pub const ENTRY_OVERHEAD: u64 = 160;

/// How often a process reads answers other processes wrote.
pub const REFRESH: Duration = Duration::from_millis(250);

/// The namespace of the message ids derived from keys (a fixed, random UUID).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_2f0e_8a4b_4c7e_9e15_3b2a_7f40_c8d1);
/// The namespace of request fingerprints.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x1f6a_90c3_5d27_4e88_b0f4_62e9_0a7c_3b55);

/// The window and the memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyOptions {
    /// How long a first answer is given again. Default: [`DEFAULT_WINDOW`].
    pub window: Duration,
    /// Most answers kept in memory; beyond it the oldest are forgotten. Default:
    /// [`DEFAULT_MAX_KEYS`].
    pub max_keys: usize,
    /// Most bytes of answers kept in memory; beyond it the oldest are forgotten. Default:
    /// [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
}

impl Default for IdempotencyOptions {
    fn default() -> Self {
        IdempotencyOptions {
            window: DEFAULT_WINDOW,
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The message id of the job enqueued with idempotency key `key` on `topic` for the request
/// with this `fingerprint` (`index`: its place in a batch, `None` for a single job): a UUIDv5,
/// the same in every process and after restarts for the same request, and another for another
/// request under a key forgotten since (else an inbox would take the new job for the old one).
pub fn message_id(topic: &str, key: &str, fingerprint: &str, index: Option<usize>) -> String {
    let name = match index {
        None => format!("{topic}\0{key}\0{fingerprint}"),
        Some(i) => format!("{topic}\0{key}\0{fingerprint}\0{i}"),
    };
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// What identifies a request for the comparison of a repeat: route, topic and the parsed body
/// (serde_json's maps are sorted, so member order and whitespace do not count).
pub fn fingerprint(route: &str, topic: &str, body: &Value) -> String {
    let text = format!("{route}\n{topic}\n{body}");
    Uuid::new_v5(&FINGERPRINT_NAMESPACE, text.as_bytes())
        .simple()
        .to_string()
}

/// The request's key: `None` without the header, `400 invalid_idempotency_key` for a malformed
/// one.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "give one Idempotency-Key header, not several".into(),
        ));
    }
    check_key(value.as_bytes()).map(Some)
}

fn check_key(bytes: &[u8]) -> Result<String, ApiError> {
    let bad = |why: &str| {
        Err(ApiError::InvalidIdempotencyKey(format!(
            "Idempotency-Key {why}; use 1 to {MAX_KEY_BYTES} printable ASCII characters, e.g. a UUID"
        )))
    };
    if bytes.is_empty() {
        return bad("is empty");
    }
    if bytes.len() > MAX_KEY_BYTES {
        return bad(&format!("is {} bytes long", bytes.len()));
    }
    if bytes.iter().any(|b| !(0x20..=0x7e).contains(b)) {
        return bad("contains a control or non-ASCII character");
    }
    if bytes[0] == b' ' || bytes[bytes.len() - 1] == b' ' {
        return bad("starts or ends with a space");
    }
    Ok(String::from_utf8(bytes.to_vec()).expect("checked ASCII"))
}

/// An answer: the status and JSON body of the first request with a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status (201).
    pub status: StatusCode,
    /// The body.
    pub body: Value,
    /// Whether this is the first answer given again.
    pub replayed: bool,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if self.replayed {
            resp.headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        resp
    }
}

/// One record of [`IDEMPOTENCY_TOPIC`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    topic: String,
    key: String,
    fingerprint: String,
    status: u16,
    /// The body, as sent.
    body: String,
    /// When it was answered (ms since the epoch).
    at_ms: i64,
    /// Its jobs were found where it says (by this process; never written to the log).
    #[serde(skip)]
    verified: bool,
}

impl Entry {
    /// Whether `other` is the same answer (the same record of the log, or its copy).
    fn same(&self, other: &Entry) -> bool {
        (self.at_ms, &self.fingerprint, &self.body)
            == (other.at_ms, &other.fingerprint, &other.body)
    }
}

type Scope = (String, String);

impl Entry {
    /// What it costs in memory: its strings (the scope is held three times: in the map's key,
    /// in the entry, in the order) and [`ENTRY_OVERHEAD`].
    fn bytes(&self) -> u64 {
        let scope = (self.topic.len() + self.key.len()) as u64;
        (3 * scope + (self.fingerprint.len() + self.body.len()) as u64) + ENTRY_OVERHEAD
    }
}

/// The answers in memory: first in the log wins, expiry after the window, at most `max_keys`
/// answers and `max_bytes` bytes.
/// Pure (time is a parameter), so its rules are unit-tested without waiting.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Scope, Entry>,
    /// Insertion order, for expiry and the cap: (scope, at_ms of the entry inserted).
    order: VecDeque<(Scope, i64)>,
    /// The next record of the topic to read.
    next: i64,
    /// Answers forgotten before their window ended (the caps).
    forgotten_early: u64,
    /// The bytes of the answers in `entries` ([`Entry::bytes`]).
    bytes: u64,
}

impl Table {
    fn live(&self, scope: &Scope, now_ms: i64, window_ms: i64) -> Option<&Entry> {
        self.entries
            .get(scope)
            .filter(|e| e.at_ms.saturating_add(window_ms) > now_ms)
    }

    /// Folds one record: kept unless a live answer for its scope is there already.
    fn fold(&mut self, entry: Entry, now_ms: i64, options: &IdempotencyOptions) {
        let window_ms = window_ms(options);
        let scope = (entry.topic.clone(), entry.key.clone());
        if entry.at_ms.saturating_add(window_ms) <= now_ms
            || self.live(&scope, now_ms, window_ms).is_some()
        {
            return;
        }
        self.order.push_back((scope.clone(), entry.at_ms));
        self.bytes += entry.bytes();
        if let Some(old) = self.entries.insert(scope, entry) {
            self.bytes = self.bytes.saturating_sub(old.bytes());
        }
        self.trim(now_ms, options);
    }

    /// Sets the live answer of `scope` as checked, when it is still `entry`.
    fn verified(&mut self, scope: &Scope, entry: &Entry) {
        if let Some(e) = self.entries.get_mut(scope).filter(|e| e.same(entry)) {
            e.verified = true;
        }
    }

    /// Forgets the live answer of `scope`, when it is still `entry` (one that failed its check).
    fn forget(&mut self, scope: &Scope, entry: &Entry) {
        if self.entries.get(scope).is_some_and(|e| e.same(entry)) {
            if let Some(old) = self.entries.remove(scope) {
                self.bytes = self.bytes.saturating_sub(old.bytes());
            }
        }
    }

    /// Forgets answers past the window, and the oldest beyond the caps.
    fn trim(&mut self, now_ms: i64, options: &IdempotencyOptions) {
        let window_ms = window_ms(options);
        while let Some((scope, at)) = self.order.front() {
            let expired = at.saturating_add(window_ms) <= now_ms;
            let over = self.entries.len() > options.max_keys || self.bytes > options.max_bytes;
            if !expired && !over {
                break;
            }
            let (scope, at) = (scope.clone(), *at);
            self.order.pop_front();
            if self.entries.get(&scope).is_some_and(|e| e.at_ms == at) {
                if let Some(old) = self.entries.remove(&scope) {
                    self.bytes = self.bytes.saturating_sub(old.bytes());
                }
                if !expired {
                    self.forgotten_early += 1;
                }
            }
        }
    }
}

fn window_ms(options: &IdempotencyOptions) -> i64 {
    i64::try_from(options.window.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn Backend>,
    options: IdempotencyOptions,
    table: Mutex<Table>,
    /// One reader of the topic at a time, so records are folded once and in order.
    reading: tokio::sync::Mutex<()>,
    /// One request per key at a time in this process.
    locks: Mutex<HashMap<Scope, Arc<tokio::sync::Mutex<()>>>>,
}

/// A process's view of the first answers; cheap to clone, refreshed in the background while any
/// clone lives.
#[derive(Debug, Clone)]
pub struct Idempotency {
    inner: Arc<Inner>,
}

impl Idempotency {
    /// Creates the topic if needed (retention: the window plus an hour), reads it to its end
    /// and starts the background refresh.
    pub async fn open(
        backend: Arc<dyn Backend>,
        options: IdempotencyOptions,
    ) -> conveyor_core::Result<Self> {
        let mut spec = TopicSpec::new(IDEMPOTENCY_TOPIC, 1);
        spec.retention_ms = Some(window_ms(&options).saturating_add(3_600_000));
        match backend.create_topic(&spec).await {
            Ok(_) | Err(Error::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let this = Idempotency {
            inner: Arc::new(Inner {
                backend,
                options,
                table: Mutex::default(),
                reading: tokio::sync::Mutex::new(()),
                locks: Mutex::default(),
            }),
        };
        this.refresh().await?;
        tokio::spawn(refresh_loop(Arc::downgrade(&this.inner)));
        Ok(this)
    }

    /// The options it runs with.
    pub fn options(&self) -> IdempotencyOptions {
        self.inner.options
    }

    /// How many answers are in memory now.
    pub fn len(&self) -> usize {
        self.table().entries.len()
    }

    /// Whether no answer is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers forgotten before their window ended, because more than `max_keys` answers or
    /// `max_bytes` bytes of them were kept.
    pub fn forgotten_early(&self) -> u64 {
        self.table().forgotten_early
    }

    /// The bytes of the answers in memory now (see [`ENTRY_OVERHEAD`]).
    pub fn bytes(&self) -> u64 {
        self.table().bytes
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the answers written since the last read (by any process).
    pub async fn refresh(&self) -> conveyor_core::Result<()> {
        refresh(&self.inner).await
    }

    /// The live answer for `scope`, as it is in memory.
    fn live(&self, scope: &Scope) -> Option<Entry> {
        let table = self.table();
        table
            .live(scope, now_ms(), window_ms(&self.inner.options))
            .cloned()
    }

    /// The live answer for `scope` once its jobs were found where it says ([`verify`]); one
    /// whose jobs are not there is forgotten (with a warning) and `None` returned. An error
    /// when the log cannot be read.
    async fn checked(&self, scope: &Scope) -> Result<Option<Entry>, ApiError> {
        let Some(entry) = self.live(scope) else {
            return Ok(None);
        };
        if entry.verified {
            return Ok(Some(entry));
        }
        let found = match verify::named_jobs(&entry) {
            Ok(jobs) => verify::stored(&*self.inner.backend, &entry.topic, &jobs).await?,
            Err(why) => Err(why),
        };
        let mut table = self.table();
        match found {
            Ok(()) => {
                table.verified(scope, &entry);
                Ok(Some(Entry {
                    verified: true,
                    ..entry
                }))
            }
            Err(why) => {
                tracing::warn!(
                    topic = %entry.topic,
                    key = %entry.key,
                    "an idempotency answer in {IDEMPOTENCY_TOPIC} names a job that is not stored ({why}); it is forgotten and the request runs as a first one"
                );
                table.forget(scope, &entry);
                Ok(None)
            }
        }
    }

    /// The live answer for (`topic`, `key`), once checked, against the request's `fingerprint`.
    async fn lookup(
        &self,
        scope: &Scope,
        fingerprint: &str,
    ) -> Result<Option<Result<Answer, ApiError>>, ApiError> {
        Ok(self
            .checked(scope)
            .await?
            .map(|entry| given_again(&entry, fingerprint)))
    }

    /// Runs `first` (which stores the job and returns the `201` body) unless `key` has a live
    /// answer on `topic`: then gives that answer again, or `422 idempotency_key_reused` when
    /// the request differs. One request per key at a time in this process; `first` runs in a
    /// task of its own, so it finishes, answer included, even if the client goes away.
    pub async fn run<F>(
        &self,
        topic: &str,
        key: &str,
        fingerprint: String,
        first: F,
    ) -> Result<Answer, ApiError>
    where
        F: Future<Output = Result<Value, ApiError>> + Send + 'static,
    {
        let scope: Scope = (topic.to_owned(), key.to_owned());
        let lock = KeyLock::new(&self.inner, scope.clone());
        let guard = Arc::clone(&lock.lock).lock_owned().await;
        if let Some(answer) = self.lookup(&scope, &fingerprint).await? {
            return answer;
        }
        // another process may have answered it: read the topic to its end first
        self.refresh().await?;
        if let Some(answer) = self.lookup(&scope, &fingerprint).await? {
            return answer;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            // dropped in reverse order: the guard (its Arc of the lock) before the lock, whose
            // drop removes the map entry only when nothing else holds it
            let _lock = lock;
            let _guard = guard;
            let body = first.await?;
            let entry = Entry {
                topic: scope.0.clone(),
                key: scope.1.clone(),
                fingerprint: fingerprint.clone(),
                status: StatusCode::CREATED.as_u16(),
                body: body.to_string(),
                at_ms: now_ms(),
                // its jobs were just stored
                verified: true,
            };
            this.append(&entry).await.map_err(|e| {
                ApiError::from(e).with_message(format!(
                    "the job is stored ({body}) but its Idempotency-Key answer could not be recorded; a repeat stores it again with the same message id, which an inbox drops"
                ))
            })?;
            // the first answer in the log wins: usually this one
            if this.live(&scope).is_some_and(|live| live.same(&entry)) {
                this.table().verified(&scope, &entry);
            }
            match this.lookup(&scope, &fingerprint).await? {
                Some(Ok(mut answer)) => {
                    answer.replayed = answer.body != body;
                    Ok(answer)
                }
                Some(Err(e)) => Err(e),
                None => {
                    // the answer logged before this one failed its check: this one stands
                    this.table().fold(entry, now_ms(), &this.inner.options);
                    Ok(Answer {
                        status: StatusCode::CREATED,
                        body,
                        replayed: false,
                    })
                }
            }
        });
        task.await
            .map_err(|e| ApiError::Internal(format!("the enqueue task failed: {e}")))?
    }

    /// Appends an answer; returns once it is durable and folded into this view.
    async fn append(&self, entry: &Entry) -> conveyor_core::Result<()> {
        let value = serde_json::to_vec(entry).expect("an entry serializes");
        let key = format!("{}\0{}", entry.topic, entry.key);
        self.inner
            .backend
            .publish(
                IDEMPOTENCY_TOPIC,
                vec![Record::new(value).with_key(key.into_bytes())],
            )
            .await?;
        self.refresh().await
    }
}

fn given_again(entry: &Entry, fingerprint: &str) -> Result<Answer, ApiError> {
    if entry.fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused(format!(
            "Idempotency-Key `{}` was used on topic `{}` for another request; use a new key for a new request",
            entry.key, entry.topic
        )));
    }
    Ok(Answer {
        status: StatusCode::from_u16(entry.status).unwrap_or(StatusCode::CREATED),
        body: serde_json::from_str(&entry.body).unwrap_or(Value::Null),
        replayed: true,
    })
}

/// This request's hold on its key's lock; the map entry goes with the last holder.
#[derive(Debug)]
struct KeyLock {
    inner: Arc<Inner>,
    scope: Scope,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl KeyLock {
    fn new(inner: &Arc<Inner>, scope: Scope) -> Self {
        let mut locks = inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        let lock = Arc::clone(locks.entry(scope.clone()).or_default());
        KeyLock {
            inner: Arc::clone(inner),
            scope,
            lock,
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // clones are only made under this lock, so the count cannot grow meanwhile
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.scope);
        }
    }
}

async fn refresh(inner: &Inner) -> conveyor_core::Result<()> {
    let _one = inner.reading.lock().await;
    let next = inner.table.lock().unwrap_or_else(|e| e.into_inner()).next;
    conveyor_runtime::entry_log::read_entries::<Entry>(
        &*inner.backend,
        IDEMPOTENCY_TOPIC,
        next,
        None,
        500,
        "an idempotency answer",
        |entries, next| {
            let now = now_ms();
            let mut table = inner.table.lock().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                match verify::named_jobs(&entry) {
                    Ok(_) => table.fold(entry, now, &inner.options),
                    Err(why) => tracing::warn!(
                        topic = %entry.topic,
                        key = %entry.key,
                        "ignoring an idempotency answer in {IDEMPOTENCY_TOPIC} this API cannot have written: {why}"
                    ),
                }
            }
            table.next = next;
        },
    )
    .await?;
    let mut table = inner.table.lock().unwrap_or_else(|e| e.into_inner());
    table.trim(now_ms(), &inner.options);
    Ok(())
}

async fn refresh_loop(weak: Weak<Inner>) {
    let mut warned = 0;
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if let Err(e) = refresh(&inner).await {
            if matches!(e, Error::Closed) {
                return;
            }
            tracing::debug!(error = %e, "cannot read {IDEMPOTENCY_TOPIC}; trying again");
        }
        let (forgotten, keys, bytes) = {
            let t = inner.table.lock().unwrap_or_else(|e| e.into_inner());
            (t.forgotten_early, t.entries.len(), t.bytes)
        };
        if forgotten > warned {
            tracing::warn!(
                forgotten,
                keys,
                bytes,
                max_keys = inner.options.max_keys,
                max_bytes = inner.options.max_bytes,
                "idempotency answers forgotten before their window ended (a repeat of one stores its job again, with the same message id); raise api.idempotency_max_keys or api.idempotency_max_bytes, whichever is reached"
            );
            warned = forgotten;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, fp: &str, at_ms: i64) -> Entry {
        Entry {
            topic: "t".into(),
            key: key.into(),
            fingerprint: fp.into(),
            status: 201,
            body: format!("{{\"id\":\"{fp}\"}}"),
            at_ms,
            verified: false,
        }
    }

    fn scope(key: &str) -> Scope {
        ("t".into(), key.into())
    }

    const OPTS: IdempotencyOptions = IdempotencyOptions {
        window: Duration::from_secs(10),
        max_keys: 3,
        max_bytes: u64::MAX,
    };

    #[test]
    fn the_first_answer_in_the_log_wins_within_the_window() {
        let mut t = Table::default();
        t.fold(entry("k", "a", 1_000), 1_000, &OPTS);
        t.fold(entry("k", "b", 2_000), 2_000, &OPTS);
        assert_eq!(t.live(&scope("k"), 2_000, 10_000).unwrap().fingerprint, "a");
        // after the window the key is new again, and the next answer is kept
        assert!(t.live(&scope("k"), 11_000, 10_000).is_none());
        t.fold(entry("k", "c", 11_500), 11_500, &OPTS);
        assert_eq!(
            t.live(&scope("k"), 11_500, 10_000).unwrap().fingerprint,
            "c"
        );
        // the expired first entry leaves the order without taking the new one with it
        t.trim(12_000, &OPTS);
        assert_eq!(
            t.live(&scope("k"), 12_000, 10_000).unwrap().fingerprint,
            "c"
        );
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn a_record_older_than_the_window_is_not_kept() {
        let mut t = Table::default();
        t.fold(entry("k", "a", 1_000), 20_000, &OPTS);
        assert!(t.entries.is_empty() && t.order.is_empty());
    }

    #[test]
    fn memory_is_bounded_oldest_forgotten_first() {
        let mut t = Table::default();
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            t.fold(entry(k, k, 1_000 + i as i64), 1_000 + i as i64, &OPTS);
        }
        assert_eq!(t.entries.len(), 3);
        assert!(t.live(&scope("a"), 1_010, 10_000).is_none());
        assert!(t.live(&scope("b"), 1_010, 10_000).is_none());
        assert!(t.live(&scope("e"), 1_010, 10_000).is_some());
        assert_eq!(t.forgotten_early, 2);
        // expiry empties it
        t.trim(100_000, &OPTS);
        assert!(t.entries.is_empty() && t.order.is_empty());
    }

    /// Answers are bounded by their bytes too: a batch's answer weighs what its ids weigh, so
    /// a few big answers push out the oldest even below `max_keys`, and the bytes counted stay
    /// within `max_bytes` (and back to 0 once all expire).
    #[test]
    fn memory_is_bounded_in_bytes_oldest_forgotten_first() {
        let opts = IdempotencyOptions {
            window: Duration::from_secs(10),
            max_keys: 1000,
            max_bytes: 10_000,
        };
        let mut t = Table::default();
        let big = |k: &str, at: i64| Entry {
            body: "x".repeat(3_000),
            ..entry(k, k, at)
        };
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            t.fold(big(k, 1_000 + i as i64), 1_000 + i as i64, &opts);
            assert!(t.bytes <= opts.max_bytes, "{} bytes kept", t.bytes);
        }
        assert_eq!(
            t.entries.len(),
            3,
            "three answers of ~3.2 KB fit 10,000 bytes"
        );
        assert!(t.live(&scope("a"), 1_010, 10_000).is_none());
        assert!(t.live(&scope("e"), 1_010, 10_000).is_some());
        assert_eq!(t.forgotten_early, 2);
        let counted: u64 = t.entries.values().map(Entry::bytes).sum();
        assert_eq!(t.bytes, counted);
        // an answer that failed its check gives its bytes back (they once leaked, and the
        // table then forgot every answer at once)
        let e = t.entries.get(&scope("e")).unwrap().clone();
        t.forget(&scope("e"), &e);
        let counted: u64 = t.entries.values().map(Entry::bytes).sum();
        assert_eq!((t.entries.len(), t.bytes), (2, counted));
        t.trim(100_000, &opts);
        assert_eq!((t.entries.len(), t.bytes), (0, 0));
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key(b"a").is_ok());
        assert!(check_key(b"order 42/retry-1").is_ok());
        assert!(check_key(&[b'x'; 255]).is_ok());
        for bad in [
            &b""[..],
            &[b'x'; 256][..],
            b"a\tb",
            b"a\x7fb",
            b" a",
            b"a ",
            "caf\u{e9}".as_bytes(),
        ] {
            let e = check_key(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_idempotency_key", "{bad:?}");
        }
    }

    #[test]
    fn ids_and_fingerprints_are_deterministic() {
        assert_eq!(
            message_id("t", "k", "f", None),
            message_id("t", "k", "f", None)
        );
        assert_ne!(
            message_id("t", "k", "f", None),
            message_id("u", "k", "f", None)
        );
        assert_ne!(
            message_id("t", "k", "f", Some(0)),
            message_id("t", "k", "f", Some(1))
        );
        assert_ne!(
            message_id("t", "k", "f", None),
            message_id("t", "k", "g", None)
        );
        let a: Value = serde_json::from_str(r#"{"type":"x","payload":{"a":1,"b":2}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "payload": {"b":2, "a":1}, "type": "x" }"#).unwrap();
        assert_eq!(fingerprint("jobs", "t", &a), fingerprint("jobs", "t", &b));
        assert_ne!(fingerprint("jobs", "t", &a), fingerprint("batch", "t", &a));
        assert_ne!(fingerprint("jobs", "t", &a), fingerprint("jobs", "u", &a));
    }

    /// Every request's per-key lock entry goes when the request ends (a map keeping one entry
    /// per key ever seen would grow without bound).
    #[tokio::test]
    async fn no_lock_entry_outlives_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(
            conveyor_embedded::EmbeddedBackend::open(conveyor_embedded::EmbeddedConfig::new(
                dir.path(),
            ))
            .unwrap(),
        );
        let opts = IdempotencyOptions {
            window: Duration::from_secs(10),
            max_keys: 10,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let idem = Idempotency::open(backend, opts).await.unwrap();
        for i in 0..200 {
            idem.run("t", &format!("k{i}"), "fp".into(), async {
                Ok(serde_json::json!({"id": 1}))
            })
            .await
            .unwrap();
        }
        assert!(idem.len() <= 10);
        assert_eq!(
            idem.inner.locks.lock().unwrap().len(),
            0,
            "lock entries left behind"
        );
    }
}
