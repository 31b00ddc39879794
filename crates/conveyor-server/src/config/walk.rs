//! Every configuration key, walked with malformed and boundary values: each is refused at load
//! with an error naming the key (never a panic, never a start that half works).

use super::*;

/// (TOML, the key the error must name)
fn bad_values() -> Vec<(String, &'static str)> {
    let kafka = |rest: &str| format!("backend = \"kafka\"\n[kafka]\n{rest}\n");
    let route = |rest: &str| format!("[[routes]]\ntopic = \"t\"\nurl = \"http://h/x\"\n{rest}\n");
    let topic = |rest: &str| format!("[[topics]]\nname = \"t\"\n{rest}\n");
    let mut v: Vec<(String, &'static str)> = vec![
        ("data_dir = 5".into(), "data_dir"),
        ("data_dir = \"\"".into(), "data_dir"),
        ("backend = \"redis\"".into(), "backend"),
        ("[api]\nlisten = \"localhost\"".into(), "api.listen"),
        ("[api]\nlisten = \"127.0.0.1:99999\"".into(), "api.listen"),
        ("[metrics]\nlisten = \"nowhere\"".into(), "metrics.listen"),
        ("[api]\nmax_body_bytes = -1".into(), "api.max_body_bytes"),
        ("[api]\nmax_body_bytes = 10".into(), "api.max_body_bytes"),
        ("[api]\nmax_batch = 0".into(), "api.max_batch"),
        (
            "[api]\nmax_reply_timeout_ms = 0".into(),
            "api.max_reply_timeout_ms",
        ),
        (
            "[api]\nmax_reply_timeout_ms = 60001".into(),
            "api.max_reply_timeout_ms",
        ),
        ("[api]\nreply_topic = \"\"".into(), "api.reply_topic"),
        ("[api]\nreply_topic = \"a b\"".into(), "api.reply_topic"),
        ("[api]\nreply_topic = 5".into(), "api.reply_topic"),
        (
            "[api]\nidempotency_window_ms = 999".into(),
            "api.idempotency_window_ms",
        ),
        (
            "[api]\nidempotency_window_ms = \"1d\"".into(),
            "api.idempotency_window_ms",
        ),
        (
            "[api]\nidempotency_max_keys = 0".into(),
            "api.idempotency_max_keys",
        ),
        (
            "[embedded]\ndurability = \"sometimes\"".into(),
            "embedded.durability",
        ),
        (
            "[embedded]\nmax_record_bytes = 0".into(),
            "embedded.max_record_bytes",
        ),
        (
            "[embedded]\nretention_interval_secs = 0".into(),
            "embedded.retention_interval_secs",
        ),
        (kafka("brokers = \"\""), "kafka.brokers"),
        (kafka("brokers = \"host-without-port\""), "kafka.brokers"),
        (kafka("profile = \"fast\""), "kafka.profile"),
        (kafka("replication_factor = 0"), "kafka.replication_factor"),
        (kafka("session_timeout_ms = 0"), "kafka.session_timeout_ms"),
        (kafka("request_timeout_ms = 0"), "kafka.request_timeout_ms"),
        (
            kafka("delivery_timeout_ms = 5"),
            "kafka.delivery_timeout_ms",
        ),
        (kafka("group_protocol = \"range\""), "kafka.group_protocol"),
        (
            kafka("[kafka.properties]\n\"linger.ms\" = [1]"),
            "kafka.properties",
        ),
        ("[retry]\nmax_attempts = 0".into(), "retry"),
        ("[retry]\nmultiplier = 0.5".into(), "retry"),
        (
            "[retry]\ninitial_delay_ms = 10\nmax_delay_ms = 5".into(),
            "retry",
        ),
        (
            "[retry]\nmax_retry_after_ms = \"1h\"".into(),
            "retry.max_retry_after_ms",
        ),
        (topic("partitions = 0"), "topics[0]"),
        ("[[topics]]\nname = \"bad name\"".into(), "topics[0]"),
        (topic("retention_ms = 0"), "topics[0]"),
        (
            topic("cleanup_policy = \"never\""),
            "topics[0].cleanup_policy",
        ),
        (topic("replication_factor = 0"), "topics[0]"),
        (topic("min_insync_replicas = 0"), "topics[0]"),
        (topic("retention_bytes = -5"), "topics[0]"),
        (
            "[[routes]]\ntopic = \"t t\"\nurl = \"http://h/x\"".into(),
            "routes[0].topic",
        ),
        (
            "[[routes]]\ntopic = \"t\"\nurl = \"http://h h/x\"".into(),
            "routes[0].url",
        ),
        (route("group = \"\""), "routes[0].group"),
        (route("concurrency = 0"), "routes[0].concurrency"),
        (route("timeout_ms = 0"), "routes[0].timeout_ms"),
        (route("max_buffered = 0"), "routes[0].max_buffered"),
        (route("[routes.retry]\nmax_attempts = 0"), "routes[0].retry"),
    ];
    let schedule = |rest: &str| {
        let mut t = String::from("[[schedules]]\n");
        for (k, v) in [
            ("name", "\"nightly\""),
            ("cron", "\"0 3 * * *\""),
            ("topic", "\"t\""),
            ("type", "\"report\""),
        ] {
            if !rest.contains(&format!("{k} =")) {
                t.push_str(&format!("{k} = {v}\n"));
            }
        }
        t + rest
    };
    v.extend([
        (schedule("cron = \"61 * * * *\""), "schedules[0].cron"),
        (schedule("cron = \"* * *\""), "schedules[0].cron"),
        (
            schedule("timezone = \"Mars/Olympus\""),
            "schedules[0].timezone",
        ),
        (schedule("topic = \"bad topic\""), "schedules[0].topic"),
        (schedule("missed = \"always\""), "schedules[0].missed"),
        (schedule("name = \"a/b\""), "schedules[0].name"),
        (schedule("type = \"\""), "schedules[0].type"),
        (schedule("payloads = 1"), "schedules[0].payloads"),
        (
            format!("{}{}", schedule(""), schedule("")),
            "schedules[1].name",
        ),
        ("[scheduler]\ngrace_ms = 500".into(), "scheduler.grace_ms"),
    ]);
    v.push(("unknown_key = 1".into(), "unknown_key"));
    v
}

#[test]
fn every_key_refuses_malformed_values_naming_the_key() {
    let cases = bad_values();
    let mut accepted = Vec::new();
    for (toml, key) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        match Config::load(Some(&path), &[]) {
            Ok(_) => accepted.push(format!("{key}: accepted {toml:?}")),
            Err(e) => {
                let e = e.to_string();
                if !e.contains(&format!("`{key}")) {
                    accepted.push(format!("{key}: error does not name it: {e}"));
                }
            }
        }
    }
    let keys: std::collections::BTreeSet<&str> = cases.iter().map(|(_, k)| *k).collect();
    eprintln!(
        "configuration walk: {} malformed values over {} keys",
        cases.len(),
        keys.len()
    );
    assert!(accepted.is_empty(), "{:#?}", accepted);
}
