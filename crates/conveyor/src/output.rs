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
