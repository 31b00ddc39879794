//! One attempt: runs the handler (with its timeout, catching panics), applies the retry
//! policy, and moves the job to a delay tier or dead-letters it.

use super::*;
use crate::observation::job_states::{Detail, Place, StateKind};
use crate::worker::warn_limit::Kind;

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Notes a state change of `task`'s job for job lookup (nothing when it is off).
pub(super) fn note_state(
    shared: &Shared,
    task: &Task,
    state: StateKind,
    attempts: u32,
    detail: Detail<'_>,
) {
    if let Some(r) = &shared.states {
        r.note(&task.record, state, attempts, detail);
    }
}

/// The start of `task`'s current attempt, when it started one.
fn started(task: &Task) -> Detail<'static> {
    Detail {
        started_at: (task.started_at != 0).then_some(task.started_at),
        ..Default::default()
    }
}

/// Runs one attempt and applies the retry policy; dead-letters what must not run again.
pub(super) async fn run_attempt(shared: &Shared, task: &Task) -> TaskResult {
    let mut job = Job::new(task.record.clone(), task.attempt);
    let outputs = Arc::clone(&job.outputs);
    let job_type = job.job_type().to_owned();
    // nothing is formatted or allocated for traces while tracing is off (the no-op path)
    let mut span = crate::observation::trace::enabled()
        .then(|| {
            crate::observation::trace::start(
                format!("process {}", task.record.topic),
                crate::observation::trace::SpanKind::Consumer,
                task.record.headers.get_str(headers::TRACEPARENT),
            )
        })
        .flatten();
    if let Some(span) = &mut span {
        job.trace = Some(span.context().to_traceparent());
        let r = &task.record;
        span.set("messaging.system", "kafka");
        span.set("messaging.operation.type", "process");
        span.set("messaging.destination.name", r.topic.clone());
        span.set(
            "messaging.destination.partition.id",
            r.partition.to_string(),
        );
        span.set("messaging.kafka.offset", r.offset);
        span.set(
            "messaging.consumer.group.name",
            shared.options.group.clone(),
        );
        span.set("conveyor.job.type", job_type.clone());
        span.set("conveyor.job.attempt", task.attempt);
        if let Some(id) = job.id() {
            span.set("messaging.message.id", id.to_owned());
        }
    }
    let policy = shared.policy(&job_type);
    if task.attempt > policy.max_attempts {
        // every allowed attempt started under an earlier owner or process and none finished
        let before = task.attempt - 1;
        let error = format!(
            "{before} attempts started and none finished (the process stopped or the partition moved while it ran); not run again"
        );
        let task = Task {
            attempt: before,
            ..task.clone()
        };
        return dead_letter(shared, &task, DeadLetterReason::Exhausted, &error).await;
    }
    if let Some(result) = unique_duplicate(shared, task).await {
        return result;
    }
    shared.stats.started.fetch_add(1, Ordering::Relaxed);
    let m = shared.metrics.of(&task.record.topic, &job_type);
    m.started.inc();
    if task.attempt == 1 {
        // from enqueued, or due for a delayed job, to this first start
        let from = due_of(&task.record)
            .into_iter()
            .chain(job.meta.produced_at.map(millis))
            .max();
        if let Some(from) = from {
            let waited = (millis(SystemTime::now()) - from).max(0) as u64;
            m.queued.observe_duration(Duration::from_millis(waited));
        }
    }
    let handler = shared
        .handlers
        .get(&job_type)
        .or(shared.fallback.as_ref())
        .cloned();
    let r = &task.record;
    // the job's own timeout wins (a webhook handler bounds its request by it too)
    let (mut limit, which) = match headers::timeout(&r.headers) {
        Some(own) => (own, "the job's timeout_ms"),
        None => match shared.options.timeout_by_type.get(&job_type) {
            Some(d) => (*d, "its job type's timeout"),
            None => (shared.options.handler_timeout, "the handler timeout"),
        },
    };
    let deadline = deadline_of(r);
    let to_deadline =
        deadline.map(|d| Duration::from_millis((d - millis(SystemTime::now())).max(0) as u64));
    let deadline_first = to_deadline.is_some_and(|d| d < limit);
    if let Some(d) = to_deadline.filter(|_| deadline_first) {
        limit = d;
    }
    let outcome = match handler {
        None => Outcome::fail(format!("no handler registered for job type `{job_type}`")),
        Some(h) => {
            // counted down when the attempt ends, aborted (a drain past its grace) included
            let running = m.running();
            let ran =
                tokio::time::timeout(limit, AssertUnwindSafe(h.handle(job)).catch_unwind()).await;
            drop(running);
            match ran {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(p)) => {
                    shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
                    Outcome::retry(format!("handler panicked: {}", panic_message(&*p)))
                }
                Err(_) if deadline_first => {
                    shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
                    let error =
                        "the handler was still running at the job's deadline; it was cancelled";
                    return dead_letter(shared, task, DeadLetterReason::Deadline, error).await;
                }
                Err(_) => Outcome::retry(format!(
                    "the handler did not finish within {which} ({limit:?}); it was cancelled"
                )),
            }
        }
    };
    if let Some(span) = span {
        span.end(match &outcome {
            Outcome::Done => None,
            Outcome::Retry { error }
            | Outcome::RetryAfter { error, .. }
            | Outcome::Fail { error } => Some(error.as_str()),
        });
    }
    // a done job's bookkeeping: the count, its series, its state for lookup
    let succeeded = || {
        shared.stats.done.fetch_add(1, Ordering::Relaxed);
        m.succeeded.inc();
        note_state(
            shared,
            task,
            StateKind::Succeeded,
            task.attempt,
            started(task),
        );
    };
    let outcome = match outcome {
        Outcome::Done => {
            let out = std::mem::take(&mut *outputs.lock().expect("outputs lock")).finish(r);
            if out.is_empty() {
                succeeded();
                return TaskResult::Finished;
            }
            // conveyor's own topics take nothing a handler emits (a record there would be read
            // as a command or an answer); reply topics take the replies
            let reserved = out.iter().find_map(|(t, _)| {
                conveyor_core::topic::validate_reply_topic(t)
                    .err()
                    .filter(|_| conveyor_core::topic::is_reserved(t))
            });
            if let Some(e) = reserved {
                Outcome::fail(format!("cannot publish the job's outputs: {e}"))
            } else if shared.options.transactional {
                match shared.check_outputs(&out).await {
                    Ok(()) => {
                        succeeded();
                        return TaskResult::Emitted(out);
                    }
                    Err(failed) => failed,
                }
            } else {
                let n = out.len() as u64;
                match crate::effects::outputs::publish_all(&*shared.backend, out).await {
                    Ok(()) => {
                        succeeded();
                        shared.stats.emitted.fetch_add(n, Ordering::Relaxed);
                        return TaskResult::Finished;
                    }
                    // a topic that does not exist or a record too large: no retry can fix it
                    Err(
                        e @ (Error::UnknownTopic(_)
                        | Error::RecordTooLarge { .. }
                        | Error::InvalidArgument(_)),
                    ) => Outcome::fail(format!("cannot publish the job's outputs: {e}")),
                    Err(e) => Outcome::retry(format!("cannot publish the job's outputs: {e}")),
                }
            }
        }
        other => other,
    };
    m.failed.inc();
    let (reason, error) = match outcome {
        Outcome::Done => unreachable!("handled above"),
        Outcome::Retry { error } | Outcome::RetryAfter { error, .. }
            if !policy.should_retry(task.attempt) =>
        {
            (DeadLetterReason::Exhausted, error)
        }
        Outcome::Retry { error } => {
            if shared
                .warnings
                .admit(Kind::Retry, &r.topic, &shared.options.group)
            {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, message_id = message_id(r), job_type, attempt = task.attempt, %error, "job failed; will retry");
            }
            return retry(shared, task, policy.delay(task.attempt), &error, deadline).await;
        }
        Outcome::RetryAfter { delay, error } => {
            if shared
                .warnings
                .admit(Kind::Retry, &r.topic, &shared.options.group)
            {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, message_id = message_id(r), job_type, attempt = task.attempt, %error, ?delay, "job failed; will retry");
            }
            // the job's own delay has its own bound, which may exceed the policy's backoff cap
            let delay = delay.min(Duration::from_millis(policy.max_retry_after_ms));
            return retry(shared, task, delay, &error, deadline).await;
        }
        Outcome::Fail { error } => (DeadLetterReason::Failed, error),
    };
    dead_letter(shared, task, reason, &error).await
}

/// A unique job another job holds the key of: dropped (`Some(Finished)`); when the ledger cannot
/// be read, tried again in a second (`Some(Retry)`); `None`: it runs.
pub(super) async fn unique_duplicate(shared: &Shared, task: &Task) -> Option<TaskResult> {
    let r = &task.record;
    let key = r.headers.get_str(headers::UNIQUE_KEY)?;
    let ledger = shared.unique.get()?;
    let meta = conveyor_core::JobMeta::from_headers(&r.headers);
    let id = meta.message_id.clone().unwrap_or_else(|| move_key(r));
    let enqueued = meta.produced_at.map_or(r.timestamp, millis);
    let until = r
        .headers
        .get_str(headers::UNIQUE_UNTIL)
        .and_then(headers::parse_time)
        .map_or(enqueued, millis);
    let group = &shared.options.group;
    match ledger
        .admit(group, &r.topic, key, &id, enqueued, until)
        .await
    {
        Ok(crate::effects::unique::Verdict::Run) => None,
        Ok(crate::effects::unique::Verdict::Duplicate { holder, until }) => {
            shared.stats.unique_dropped.fetch_add(1, Ordering::Relaxed);
            shared
                .metrics
                .of(&r.topic, &meta.job_type.clone().unwrap_or_default())
                .duplicate
                .inc();
            let until = headers::format_time(
                SystemTime::UNIX_EPOCH + Duration::from_millis(until.max(0) as u64),
            );
            tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, unique_key = key, id, holder, until, "a duplicate of a unique job was dropped without running: the job `holder` holds its key");
            let reason = format!("unique_key `{key}` held by {holder}");
            note_state(
                shared,
                task,
                StateKind::Duplicate,
                task.attempt - 1,
                Detail {
                    reason: Some(&reason),
                    ..Default::default()
                },
            );
            Some(TaskResult::Finished)
        }
        Err(e) => {
            tracing::warn!(error = %e, unique_key = key, "cannot read the unique-key ledger; trying the job again in 1 s (not counted as an attempt)");
            Some(TaskResult::Again(Duration::from_secs(1)))
        }
    }
}

/// Schedules the next attempt after `delay`: in memory up to `retry_in_place_max`, otherwise in
/// a delay tier; dead-letters instead when it would start after the job's deadline.
pub(super) async fn retry(
    shared: &Shared,
    task: &Task,
    delay: Duration,
    error: &str,
    deadline: Option<i64>,
) -> TaskResult {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    let next = millis(SystemTime::now()).saturating_add(delay_ms);
    if deadline.is_some_and(|d| next >= d) {
        shared.stats.deadline.fetch_add(1, Ordering::Relaxed);
        let error = format!(
            "{error} (the next attempt, in {delay:?}, would start after the job's deadline)"
        );
        return dead_letter(shared, task, DeadLetterReason::Deadline, &error).await;
    }
    shared.stats.retried.fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .of(&task.record.topic, job_type_of(&task.record))
        .retried
        .inc();
    note_state(
        shared,
        task,
        StateKind::Retrying,
        task.attempt,
        Detail {
            until: Some(next),
            error: Some(error),
            ..started(task)
        },
    );
    let o = &shared.options;
    if delay > o.retry_in_place_max
        && o.tiers.choose(delay).is_some()
        && move_to_tier(shared, task, next, Some(error)).await
    {
        shared.stats.delayed.fetch_add(1, Ordering::Relaxed);
        return TaskResult::Parked(delay);
    }
    TaskResult::Retry(delay)
}

/// The `dedup_key` of moving `r` to a delay tier: `<topic>/<partition>/<offset>`.
pub(super) fn move_key(r: &ConsumedRecord) -> String {
    format!("{}/{}/{}", r.topic, r.partition, r.offset)
}

/// The most bytes of an error kept in the `first_error` and `last_error` headers.
pub(super) const ERROR_HEADER_BYTES: usize = 1024;

/// Writes `task`'s job to the delay tier for a wait until `due` (ms since the epoch), to come
/// back to its partition; with `error`, as its next attempt (a retry). Retries transient
/// failures; returns false when the record cannot be written (too large: it then waits in
/// memory).
pub(super) async fn move_to_tier(
    shared: &Shared,
    task: &Task,
    due: i64,
    error: Option<&str>,
) -> bool {
    let r = &task.record;
    let o = &shared.options;
    let left = Duration::from_millis((due - millis(SystemTime::now())).max(0) as u64);
    let tier = o.tiers.choose(left).unwrap_or_else(|| o.tiers.shortest());
    let topic = DelayTiers::topic(&r.topic, tier);
    let mut record = r.to_record();
    let h = &mut record.headers;
    let due_at = SystemTime::UNIX_EPOCH + Duration::from_millis(due.max(0) as u64);
    h.insert(headers::DUE_AT, headers::format_time(due_at));
    h.insert(headers::DELAY_PARTITION, r.partition.to_string());
    h.insert(headers::RETRY_GROUP, o.group.clone());
    h.insert(headers::DEDUP_KEY, move_key(r));
    match error {
        Some(error) => {
            let error = crate::worker::dead_letter::cut_to(error, ERROR_HEADER_BYTES);
            h.insert(headers::ATTEMPT, (task.attempt + 1).to_string());
            if h.get(headers::FIRST_ERROR).is_none() {
                h.insert(headers::FIRST_ERROR, error.clone());
            }
            h.insert(headers::LAST_ERROR, error);
        }
        None => h.insert(headers::ATTEMPT, task.attempt.to_string()),
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared.backend.publish(&topic, vec![record.clone()]).await {
            Ok(_) => return true,
            Err(
                e @ (Error::RecordTooLarge { .. }
                | Error::InvalidArgument(_)
                | Error::UnknownTopic(_)
                | Error::UnknownPartition { .. }),
            ) => {
                tracing::error!(error = %e, topic, "cannot move the job to its delay tier; it waits in memory");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot write to the delay tier; retrying (the job stays uncommitted)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Writes `task`'s dead letter, retrying transient failures (the job stays uncommitted
/// meanwhile) and trimming one that is too large.
pub(super) async fn dead_letter(
    shared: &Shared,
    task: &Task,
    reason: DeadLetterReason,
    error: &str,
) -> TaskResult {
    let r = &task.record;
    let job_type = job_type_of(r);
    let dlq = dead_letter_topic(&r.topic, &shared.options.dlq_suffix);
    let record = dead_letter_record(r, &shared.options.group, task.attempt, reason, error);
    if shared
        .warnings
        .admit(Kind::DeadLetter, &r.topic, &shared.options.group)
    {
        tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, message_id = message_id(r), job_type, attempt = task.attempt, %error, dlq, reason = reason.as_str(), "job dead-lettered");
    }
    let mut backoff = Duration::from_millis(100);
    let mut record = record;
    let mut place = None;
    loop {
        match shared.backend.publish(&dlq, vec![record.clone()]).await {
            Ok(at) => {
                place = at.first().map(|p| Place {
                    topic: dlq.clone(),
                    partition: p.partition,
                    offset: p.offset,
                });
                break;
            }
            // permanent: retrying the same record would block the partition forever
            Err(e @ Error::RecordTooLarge { .. })
                if record.headers.get(dlq_header::TRIMMED).is_none() =>
            {
                tracing::error!(error = %e, dlq, "the dead letter is too large; writing a trimmed one");
                record = trimmed_dead_letter_record(&record, &e.to_string());
            }
            Err(e @ Error::RecordTooLarge { .. }) => {
                tracing::error!(error = %e, dlq, topic = %r.topic, partition = r.partition, offset = r.offset, "even the trimmed dead letter is too large; the job is given up (it stays at its original offset)");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, dlq, "cannot write to the dead-letter topic; retrying (the job stays uncommitted)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    let m = shared.metrics.of(&r.topic, job_type);
    m.dead_lettered.inc();
    if matches!(reason, DeadLetterReason::Deadline) {
        m.deadline.inc();
    }
    note_state(
        shared,
        task,
        StateKind::Dead,
        task.attempt,
        Detail {
            error: Some(error),
            reason: Some(reason.as_str()),
            dead_letter: place,
            ..started(task)
        },
    );
    // a request learns now, not at its timeout (at least once, outside any transaction, like
    // the dead letter itself)
    if let Some((to, reply)) = crate::effects::outputs::reply_record(r, Bytes::new(), Some(error)) {
        if let Err(e) = shared.backend.publish(&to, vec![reply]).await {
            tracing::warn!(error = %e, reply_to = to, "cannot send the failed request's error reply; its caller times out instead");
        }
    }
    TaskResult::Finished
}

/// The message id of a record, for log lines (`""` when it has none).
fn message_id(r: &ConsumedRecord) -> &str {
    r.headers.get_str(headers::MESSAGE_ID).unwrap_or("")
}

/// The job type of a record, read from its headers (`""` when it has none).
pub(super) fn job_type_of(r: &ConsumedRecord) -> &str {
    r.headers.get_str(headers::JOB_TYPE).unwrap_or_default()
}
