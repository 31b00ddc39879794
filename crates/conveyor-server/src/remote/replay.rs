//! Dead-letter replay through the HTTP API in steps, as `conveyor dlq replay` runs it: one
//! `POST /v1/topics/{topic}/dlq:replay` per partition and step of [`ReplayOptions::step`] dead
//! letters, so the caller can show progress. The range of each partition is fixed when it
//! starts (up to the high watermark then), as a single call fixes it.

use conveyor_core::topic::PartitionInfo;
use conveyor_runtime::operations::replay::{PartitionReplay, ReplayReport, MAX_LISTED};
use serde_json::json;

use super::{ApiClient, RemoteError};

/// What to replay (the request body's fields, see the OpenAPI document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Only dead letters of this job type.
    pub job_type: Option<String>,
    /// Only this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// First offset, in each partition.
    pub from_offset: Option<i64>,
    /// Last offset, included, in each partition.
    pub to_offset: Option<i64>,
    /// Write nothing, report what would move.
    pub dry_run: bool,
    /// Dead letters scanned per call. Default: 2000.
    pub step: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            job_type: None,
            partition: None,
            from_offset: None,
            to_offset: None,
            dry_run: false,
            step: 2000,
        }
    }
}

impl ApiClient {
    /// The dead-letter topic `topic` stands for: `topic` itself when its name ends in `.dlq` or
    /// `<topic>.dlq` does not exist, `<topic>.dlq` otherwise (so `emails` means `emails.dlq`).
    pub async fn dead_letter_topic_of(&self, topic: &str) -> Result<String, RemoteError> {
        if topic.ends_with(".dlq") {
            return Ok(topic.to_owned());
        }
        let dlq = conveyor_runtime::worker::dead_letter::dead_letter_topic(topic, ".dlq");
        match self.describe_topic(&dlq).await {
            Ok(_) => Ok(dlq),
            Err(RemoteError::Api { status: 404, .. }) => Ok(topic.to_owned()),
            Err(e) => Err(e),
        }
    }

    /// Replays the dead letters of `dlq_topic` that `opts` selects in steps, calling `on_step`
    /// with the partition's running totals after each; returns the totals of every partition.
    pub async fn replay_in_steps(
        &self,
        dlq_topic: &str,
        opts: &ReplayOptions,
        mut on_step: impl FnMut(&PartitionReplay),
    ) -> Result<ReplayReport, RemoteError> {
        let info = self.describe_topic(dlq_topic).await?;
        let partitions: Vec<PartitionInfo> = serde_json::from_value(info["partitions"].clone())
            .map_err(|e| RemoteError::Protocol(format!("topic description: {e}")))?;
        let mut report = ReplayReport {
            dlq_topic: dlq_topic.to_owned(),
            ledger_topic: conveyor_runtime::operations::replay::ledger::ledger_topic(dlq_topic),
            dry_run: opts.dry_run,
            ..ReplayReport::default()
        };
        let chosen: Vec<PartitionInfo> = match opts.partition {
            None => partitions,
            Some(p) => match partitions.iter().find(|i| i.partition == p) {
                Some(i) => vec![*i],
                // the server's answer (422) names the problem
                None => return self.step(dlq_topic, opts, p, None, None).await,
            },
        };
        for p in chosen {
            let from = opts.from_offset.unwrap_or(0).max(p.low);
            let to = opts.to_offset.unwrap_or(i64::MAX).min(p.high - 1);
            let mut part = PartitionReplay {
                partition: p.partition,
                from_offset: from,
                to_offset: to,
                next_offset: from,
                done: from > to,
                ..PartitionReplay::default()
            };
            while part.next_offset <= to {
                let step = self
                    .step(
                        dlq_topic,
                        opts,
                        p.partition,
                        Some(part.next_offset),
                        Some(to),
                    )
                    .await?;
                let Some(s) = step.partitions.first() else {
                    return Err(RemoteError::Protocol(
                        "a replay answer without its partition".into(),
                    ));
                };
                let stuck = s.next_offset <= part.next_offset;
                part.next_offset = s.next_offset;
                part.done = s.done;
                part.scanned += s.scanned;
                part.matched += s.matched;
                part.replayed += s.replayed;
                part.already_replayed += s.already_replayed;
                part.skipped_unroutable += s.skipped_unroutable;
                let room = MAX_LISTED.saturating_sub(report.moved.len());
                report.moved.extend(step.moved.into_iter().take(room));
                let room = MAX_LISTED.saturating_sub(report.skipped.len());
                report.skipped.extend(step.skipped.into_iter().take(room));
                on_step(&part);
                if stuck {
                    return Err(RemoteError::Protocol(format!(
                        "the replay of partition {} did not get past offset {}",
                        p.partition, part.next_offset
                    )));
                }
            }
            if part.scanned == 0 {
                on_step(&part);
            }
            report.scanned += part.scanned;
            report.matched += part.matched;
            report.replayed += part.replayed;
            report.already_replayed += part.already_replayed;
            report.skipped_unroutable += part.skipped_unroutable;
            report.partitions.push(part);
        }
        Ok(report)
    }

    /// One call: at most `opts.step` dead letters of `partition` from `from` to `to`.
    async fn step(
        &self,
        dlq_topic: &str,
        opts: &ReplayOptions,
        partition: i32,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<ReplayReport, RemoteError> {
        let body = json!({
            "type": opts.job_type,
            "partition": partition,
            "from_offset": from.or(opts.from_offset),
            "to_offset": to.or(opts.to_offset),
            "limit": opts.step,
            "dry_run": opts.dry_run,
        });
        self.replay_dead_letters(dlq_topic, &body).await
    }
}
