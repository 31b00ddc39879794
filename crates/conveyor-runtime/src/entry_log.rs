//! A one-partition log of JSON entries, read in order and folded into memory: the control log
//! ([`crate::time::control`]), the unique-key ledger ([`crate::effects::unique`]) and the API's idempotency
//! answers each are one. One reader serves them: from an offset to the end of the log (or to a
//! given offset), a batch at a time, a record that is not an entry skipped with a warning.
//!
//! Their readers trust only what conveyor could have written: conveyor writes entries without
//! headers, and no way in writes jobs to its topics, so a record carrying a job's header
//! ([`conveyor_core::headers::job_header`]: a schedule's tick, a replayed dead letter, a reply,
//! as the ways in wrote them before they refused `conveyor.*`) is a job someone wrote to the log
//! and is skipped, whatever its value says.

use std::time::Duration;

use conveyor_core::{Backend, Error, Result};
use serde::de::DeserializeOwned;

/// Empty reads before the expected end, 50 ms apart, before reading is an error.
const READ_TRIES: usize = 20;

/// Reads partition 0 of `topic` from `next`, `batch` records at a time, decodes each record as
/// a `T` and hands each batch, with the offset after it, to `apply`; returns the next offset.
///
/// Without `end` it stops at the first empty read (the end of the log). With `end` it reads
/// until `end`, and a read that keeps coming back empty before it (a fetch timing out) is an
/// error after [`READ_TRIES`] tries, never "no entries". A record that carries a job's header or
/// does not decode is skipped, with a warning saying it is not `what` (e.g. "a claim").
pub async fn read_entries<T: DeserializeOwned>(
    backend: &dyn Backend,
    topic: &str,
    mut next: i64,
    end: Option<i64>,
    batch: usize,
    what: &str,
    mut apply: impl FnMut(Vec<T>, i64),
) -> Result<i64> {
    let mut empty = 0;
    loop {
        if end.is_some_and(|end| next >= end) {
            return Ok(next);
        }
        let records = backend.fetch(topic, 0, next, batch).await?;
        let Some(last) = records.last().map(|r| r.offset) else {
            let Some(end) = end else {
                return Ok(next);
            };
            empty += 1;
            if empty >= READ_TRIES {
                return Err(Error::Broker(format!(
                    "{topic} could not be read from offset {next} to {end}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        empty = 0;
        let entries = records
            .iter()
            .filter_map(|r| {
                if let Some(header) = conveyor_core::headers::job_header(&r.headers) {
                    tracing::warn!(topic, offset = r.offset, header, "ignoring a job written to the log (it carries the job header `{header}`), not {what}");
                    return None;
                }
                match serde_json::from_slice::<T>(&r.value) {
                    Ok(entry) => Some(entry),
                    Err(e) => {
                        tracing::warn!(topic, offset = r.offset, error = %e, "ignoring a record that is not {what}");
                        None
                    }
                }
            })
            .collect();
        next = last + 1;
        apply(entries, next);
    }
}
