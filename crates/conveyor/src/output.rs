//! How the CLI prints API answers: tables for topics, plans and lag. Formatting only.

use serde_json::Value;

fn arr(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `GET /v1/topics` as a table.
pub(crate) fn topics(topics: &Value) -> String {
    let mut out = format!(
        "{:<40} {:>10} {:>12}  {}\n",
        "TOPIC", "PARTITIONS", "RECORDS", "OFFSETS (partition:low-high)"
    );
    for t in arr(&topics["topics"]) {
        let parts: Vec<&Value> = arr(&t["partitions"]).collect();
        let retained: i64 = parts
            .iter()
            .map(|p| p["high"].as_i64().unwrap_or(0) - p["low"].as_i64().unwrap_or(0))
            .sum();
        let ranges: Vec<String> = parts
            .iter()
            .map(|p| format!("{}:{}-{}", p["partition"], p["low"], p["high"]))
            .collect();
        out.push_str(&format!(
            "{:<40} {:>10} {:>12}  {}\n",
            s(&t["name"]),
            parts.len(),
            retained,
            ranges.join(" ")
        ));
    }
    out
}

/// A topics plan, one block per topic, and whether there is anything to apply.
pub(crate) fn plan(answer: &Value) -> (String, PlanSummary) {
    let mut out = String::new();
    let mut sum = PlanSummary::default();
    for p in arr(&answer["plan"]) {
        let (mark, what) = match s(&p["action"]) {
            "create" => {
                sum.create += 1;
                ("+", "create")
            }
            "update" => {
                sum.update += 1;
                ("~", "update")
            }
            "refused" => {
                sum.refused += 1;
                ("!", "refused")
            }
            _ => {
                sum.unchanged += 1;
                ("=", "unchanged")
            }
        };
        out.push_str(&format!("{mark} {} ({what})\n", s(&p["name"])));
        for c in arr(&p["changes"]) {
            out.push_str(&format!(
                "    {:<20} {} -> {}\n",
                s(&c["setting"]),
                s(&c["from"]),
                s(&c["to"])
            ));
        }
        if let Some(r) = p["refused"].as_str() {
            out.push_str(&format!("    refused: {r}\n"));
        }
        for w in arr(&p["warnings"]) {
            out.push_str(&format!("    warning: {}\n", s(w)));
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
pub(crate) fn lag(answer: &Value) -> String {
    let mut out = format!(
        "{:<40} {:>9} {:>12} {:>12} {:>10}\n",
        "TOPIC", "PARTITION", "COMMITTED", "END OFFSET", "LAG"
    );
    for t in arr(&answer["topics"]) {
        for p in arr(&t["partitions"]) {
            let committed = match p["committed"].as_i64() {
                Some(c) => c.to_string(),
                None => "-".to_owned(),
            };
            out.push_str(&format!(
                "{:<40} {:>9} {:>12} {:>12} {:>10}\n",
                s(&t["topic"]),
                p["partition"],
                committed,
                p["high_watermark"],
                p["lag"]
            ));
        }
    }
    out.push_str(&format!(
        "group {}: total lag {}\n",
        s(&answer["group"]),
        answer["lag"]
    ));
    out
}
