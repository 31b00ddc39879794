//! How the CLI prints API answers: tables for topics, plans and lag. Formatting only.

use conveyor_core::{PlanAction, TopicInfo, TopicPlan};
use conveyor_runtime::GroupLag;

/// `GET /v1/topics` as a table.
pub(crate) fn topics(topics: &[TopicInfo]) -> String {
    let mut out = format!(
        "{:<40} {:>10} {:>12}  {}\n",
        "TOPIC", "PARTITIONS", "RECORDS", "OFFSETS (partition:low-high)"
    );
    for t in topics {
        let ranges: Vec<String> = t
            .partitions
            .iter()
            .map(|p| format!("{}:{}-{}", p.partition, p.low, p.high))
            .collect();
        out.push_str(&format!(
            "{:<40} {:>10} {:>12}  {}\n",
            t.name,
            t.partition_count(),
            t.retained(),
            ranges.join(" ")
        ));
    }
    out
}

/// `GET /v1/schedules` as a table.
pub(crate) fn schedules(list: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "{:<24} {:<18} {:<16} {:<24} {:<20} {:<6} {:<6}  {}\n",
        "NAME", "CRON", "TIMEZONE", "TOPIC", "TYPE", "MISSED", "SOURCE", "NEXT"
    );
    for s in list {
        out.push_str(&format!(
            "{:<24} {:<18} {:<16} {:<24} {:<20} {:<6} {:<6}  {}\n",
            text(s, "name"),
            text(s, "cron"),
            text(s, "timezone"),
            text(s, "topic"),
            text(s, "type"),
            text(s, "missed"),
            text(s, "source"),
            text(s, "next")
        ));
    }
    out
}

/// A topics plan, one block per topic, and whether there is anything to apply.
pub(crate) fn plan(plans: &[TopicPlan]) -> (String, PlanSummary) {
    let mut out = String::new();
    let mut sum = PlanSummary::default();
    for p in plans {
        let (mark, what) = match p.action {
            PlanAction::Create => {
                sum.create += 1;
                ("+", "create")
            }
            PlanAction::Update => {
                sum.update += 1;
                ("~", "update")
            }
            PlanAction::Refused => {
                sum.refused += 1;
                ("!", "refused")
            }
            PlanAction::Unchanged => {
                sum.unchanged += 1;
                ("=", "unchanged")
            }
        };
        out.push_str(&format!("{mark} {} ({what})\n", p.name));
        for c in &p.changes {
            out.push_str(&format!("    {:<20} {} -> {}\n", c.setting, c.from, c.to));
        }
        if let Some(r) = &p.refused {
            out.push_str(&format!("    refused: {r}\n"));
        }
        for w in &p.warnings {
            out.push_str(&format!("    warning: {w}\n"));
        }
    }
    out.push_str(&format!(
        "plan: {} to create, {} to update, {} unchanged, {} refused\n",
        sum.create, sum.update, sum.unchanged, sum.refused
    ));
    (out, sum)
}

/// Counts of a plan's actions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PlanSummary {
    pub(crate) create: usize,
    pub(crate) update: usize,
    pub(crate) unchanged: usize,
    pub(crate) refused: usize,
}

/// `GET /v1/groups/{group}/lag` as a table.
pub(crate) fn lag(group: &str, lags: &[GroupLag]) -> String {
    let mut out = format!(
        "{:<40} {:>9} {:>12} {:>12} {:>10}\n",
        "TOPIC", "PARTITION", "COMMITTED", "END OFFSET", "LAG"
    );
    for t in lags {
        for p in &t.partitions {
            let committed = p
                .committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string());
            out.push_str(&format!(
                "{:<40} {:>9} {:>12} {:>12} {:>10}\n",
                t.topic, p.partition, committed, p.high_watermark, p.lag
            ));
        }
    }
    let total: i64 = lags.iter().map(|l| l.lag).sum();
    out.push_str(&format!("group {group}: total lag {total}\n"));
    out
}

/// One step of `dlq replay`: the partition's running totals.
pub(crate) fn replay_step(
    p: &conveyor_runtime::operations::replay::PartitionReplay,
    dry_run: bool,
) -> String {
    let total = (p.to_offset - p.from_offset + 1).max(0);
    let scanned = (p.next_offset - p.from_offset).clamp(0, total);
    format!(
        "partition {}: {scanned} of {total} scanned, {} {}, {} already replayed, {} unroutable",
        p.partition,
        p.replayed,
        if dry_run { "to move" } else { "moved" },
        p.already_replayed,
        p.skipped_unroutable
    )
}

/// The outcome of `dlq replay`: how many moved, how many were already replayed, and why any
/// could not be (in a dry run also what would move).
pub(crate) fn replay_summary(r: &conveyor_runtime::operations::replay::ReplayReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        for m in &r.moved {
            out.push_str(&format!(
                "would move {} -> {} (type {}, id {})\n",
                m.replayed_from,
                m.topic,
                m.job_type.as_deref().unwrap_or("-"),
                m.message_id.as_deref().unwrap_or("-")
            ));
        }
        if (r.moved.len() as u64) < r.replayed {
            out.push_str(&format!(
                "... and {} more\n",
                r.replayed - r.moved.len() as u64
            ));
        }
    }
    for s in &r.skipped {
        out.push_str(&format!("not replayed {}: {}\n", s.dead_letter, s.reason));
    }
    out.push_str(&format!(
        "{} {} dead letters of {} to their topics; {} already replayed, {} unroutable; {} scanned, {} selected{}\n",
        if r.dry_run { "dry run: would move" } else { "moved" },
        r.replayed,
        r.dlq_topic,
        r.already_replayed,
        r.skipped_unroutable,
        r.scanned,
        r.matched,
        if r.dry_run {
            String::from(" (nothing was written)")
        } else {
            format!(" (ledger {})", r.ledger_topic)
        }
    ));
    out
}
