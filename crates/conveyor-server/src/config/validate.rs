//! Validation: the values that parse but cannot work, refused at load with an error naming the
//! key ([`Config::validate`]), including `[[schedules]]` and `[scheduler]`.

use super::*;

impl Config {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        // first: the checks below do arithmetic on these values
        bounds::check(self)?;
        if self.data_dir.as_os_str().is_empty() {
            return invalid(
                "data_dir".into(),
                "must name a folder, e.g. \".conveyor\"".into(),
            );
        }
        if self.embedded.max_record_bytes < 16 * 1024 {
            return invalid(
                "embedded.max_record_bytes".into(),
                format!(
                    "{} is too small: use at least 16384",
                    self.embedded.max_record_bytes
                ),
            );
        }
        if let Err(e) = conveyor_runtime::time::tiers::DelayTiers::parse(&self.delay.tiers) {
            return invalid(
                "delay.tiers".into(),
                format!("{e}; write whole seconds such as [\"5s\", \"1m\", \"10m\", \"1h\"]"),
            );
        }
        if self.embedded.retention_interval_secs == 0 {
            return invalid(
                "embedded.retention_interval_secs".into(),
                "must be at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return invalid(
                "tracing.sample_ratio".into(),
                format!(
                    "{} is not a share: use 0.0 to 1.0",
                    self.tracing.sample_ratio
                ),
            );
        }
        if let Some(e) = &self.tracing.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return invalid(
                    "tracing.otlp_endpoint".into(),
                    "must be an http:// or https:// URL of an OTLP/HTTP receiver, e.g. \"http://127.0.0.1:4318\"".into(),
                );
            }
        }
        match self.backend.as_str() {
            "embedded" => {}
            "kafka" => {
                if self.kafka.brokers.trim().is_empty() {
                    return invalid(
                        "kafka.brokers".into(),
                        "set the bootstrap brokers, e.g. \"127.0.0.1:9092\" (CONVEYOR_KAFKA__BROKERS)".into(),
                    );
                }
                for b in self.kafka.brokers.split(',') {
                    let b = b.trim();
                    let port_ok = b.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !port_ok {
                        return invalid(
                            "kafka.brokers".into(),
                            format!("`{b}` is not host:port (e.g. kafka-1:9092)"),
                        );
                    }
                }
                if self.kafka.replication_factor.is_some_and(|r| r < 1) {
                    return invalid(
                        "kafka.replication_factor".into(),
                        "must be at least 1 (leave it out for the broker's default)".into(),
                    );
                }
                if self.kafka.session_timeout_ms < 1000 {
                    return invalid(
                        "kafka.session_timeout_ms".into(),
                        "must be at least 1000 (brokers refuse less than group.min.session.timeout.ms, 6000 by default)".into(),
                    );
                }
                if self.kafka.request_timeout_ms < 100 {
                    return invalid(
                        "kafka.request_timeout_ms".into(),
                        "must be at least 100".into(),
                    );
                }
                if !["low_latency", "throughput"].contains(&self.kafka.profile.as_str()) {
                    return invalid(
                        "kafka.profile".into(),
                        format!(
                            "`{}`: use `low_latency` or `throughput`",
                            self.kafka.profile
                        ),
                    );
                }
                if !["classic", "consumer"].contains(&self.kafka.group_protocol.as_str()) {
                    return invalid(
                        "kafka.group_protocol".into(),
                        format!(
                            "`{}`: use `classic` or `consumer` (KIP-848, Kafka 4.0+)",
                            self.kafka.group_protocol
                        ),
                    );
                }
                if self.kafka.delivery_timeout_ms < 100 {
                    return invalid(
                        "kafka.delivery_timeout_ms".into(),
                        format!(
                            "{} ms is too short for any broker round trip: use at least 100 (the default is 30000)",
                            self.kafka.delivery_timeout_ms
                        ),
                    );
                }
            }
            other => {
                return invalid(
                    "backend".into(),
                    format!("unknown backend `{other}`: use `embedded` or `kafka`"),
                )
            }
        }
        if self.api.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "api.listen".into(),
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.api.listen
                ),
            );
        }
        if let Err((key, message)) = self.metrics.check() {
            return invalid(key, message);
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes".into(), "must be at least 1024".into());
        }
        let headroom = conveyor_runtime::worker::dead_letter::DEAD_LETTER_HEADROOM;
        if self.backend == "embedded"
            && self.api.max_body_bytes + headroom > self.embedded.max_record_bytes
        {
            return invalid(
                "api.max_body_bytes".into(),
                format!(
                    "{} leaves less than {headroom} bytes below embedded.max_record_bytes ({}): the dead letter of the largest job accepted could not be written; lower it or raise embedded.max_record_bytes",
                    self.api.max_body_bytes, self.embedded.max_record_bytes
                ),
            );
        }
        if self.api.max_batch == 0 {
            return invalid("api.max_batch".into(), "must be at least 1".into());
        }
        if !(1..=crate::api::requests::MAX_REPLY_TIMEOUT_MS)
            .contains(&self.api.max_reply_timeout_ms)
        {
            return invalid(
                "api.max_reply_timeout_ms".into(),
                "must be 1 to 60000 (60 s)".into(),
            );
        }
        if let Some(topic) = &self.api.reply_topic {
            match conveyor_core::topic::validate_reply_topic(topic) {
                Ok(()) => {}
                Err(e @ conveyor_core::Error::ReservedTopic { .. }) => {
                    return invalid(
                        "api.reply_topic".into(),
                        format!("{e} (or a reply topic of its own, `conveyor.replies.<name>`)"),
                    )
                }
                Err(e) => return invalid("api.reply_topic".into(), e.to_string()),
            }
        }
        if !(1000..=366 * 24 * 3600 * 1000).contains(&self.api.idempotency_window_ms) {
            return invalid(
                "api.idempotency_window_ms".into(),
                "must be 1000 (1 s) to 31622400000 (366 days)".into(),
            );
        }
        if self.api.idempotency_max_keys == 0 {
            return invalid(
                "api.idempotency_max_keys".into(),
                "must be at least 1".into(),
            );
        }
        if let Err(m) = self.retry.validate() {
            return invalid("retry".into(), m);
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = t.validate() {
                return invalid(format!("topics[{i}]"), e.to_string());
            }
        }
        // two routes in one group on one topic would split its jobs between their URLs
        let mut groups: std::collections::HashMap<(String, String), usize> = Default::default();
        for (i, r) in self.routes.iter().enumerate() {
            for topic in r.topics() {
                if let Some(first) = groups.insert((r.group(), topic.clone()), i) {
                    return invalid(
                        format!("routes[{i}].group"),
                        format!(
                            "routes[{first}] and routes[{i}] both consume `{topic}` in group `{}`, so each would get only part of its jobs; give routes[{i}] its own `group` (a new group starts from the oldest retained job)",
                            r.group()
                        ),
                    );
                }
            }
            for (t, w) in &r.priorities {
                if let Err(e) = conveyor_core::topic::validate_job_topic(t) {
                    return invalid(format!("routes[{i}].priorities"), e.to_string());
                }
                if *w == 0 {
                    return invalid(
                        format!("routes[{i}].priorities"),
                        format!("the weight of `{t}` is 0: weights are at least 1"),
                    );
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            // a route's worker writes retries, delay tiers and dead letters of its topic
            if let Err(e) = conveyor_core::topic::validate_job_topic(&r.topic) {
                return invalid(format!("routes[{i}].topic"), e.to_string());
            }
            // the route's worker creates `<topic>.dlq`: it must be a valid name too, or the
            // route would never start
            let dlq = conveyor_runtime::worker::dead_letter::dead_letter_topic(&r.topic, ".dlq");
            if let Err(e) = conveyor_core::topic::validate_name(&dlq) {
                return invalid(
                    format!("routes[{i}].topic"),
                    format!("its dead-letter topic `{dlq}` is not a valid name: {e}"),
                );
            }
            // and its delay tiers `<topic>.delay.<tier>`
            for topic in r.topics() {
                for (tier, _) in self.delay.tiers().topics(&topic) {
                    if let Err(e) = conveyor_core::topic::validate_name(&tier) {
                        return invalid(
                            format!("routes[{i}].topic"),
                            format!("its delay-tier topic `{tier}` is not a valid name: {e}; use a shorter topic name"),
                        );
                    }
                }
            }
            if r.max_buffered == 0 {
                return invalid(
                    format!("routes[{i}].max_buffered"),
                    "must be at least 1 (0 would never fetch a job)".into(),
                );
            }
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return invalid(
                    format!("routes[{i}].url"),
                    format!("`{}` must start with http:// or https://", r.shown_url()),
                );
            }
            // parsed as the webhook client will: a URL it cannot send to would dead-letter
            // every job as "builder error"
            match reqwest::Url::parse(&r.url) {
                Ok(u)
                    if u.host_str().is_some_and(|h| !h.is_empty())
                        && !r.url.contains(char::is_whitespace) => {}
                Ok(_) => {
                    return invalid(
                        format!("routes[{i}].url"),
                        format!("`{}` has no host, or contains whitespace", r.shown_url()),
                    )
                }
                Err(e) => {
                    return invalid(
                        format!("routes[{i}].url"),
                        format!("`{}` is not a valid URL: {e}", r.shown_url()),
                    )
                }
            }
            if r.group.as_ref().is_some_and(|g| g.trim().is_empty()) {
                return invalid(
                    format!("routes[{i}].group"),
                    "must not be empty (leave it out for webhook.<topic>)".into(),
                );
            }
            if r.concurrency == 0 {
                return invalid(
                    format!("routes[{i}].concurrency"),
                    "must be at least 1".into(),
                );
            }
            if r.timeout_ms == 0 {
                return invalid(
                    format!("routes[{i}].timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if let Some(Err(m)) = r.retry.as_ref().map(RetryPolicy::validate) {
                return invalid(format!("routes[{i}].retry"), m);
            }
            route_secrets::check(r, i)?;
        }
        self.validate_schedules()
    }

    /// Checks `[[schedules]]` and `[scheduler]`.
    fn validate_schedules(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        // a grace shorter than two heartbeats would count every handover as downtime
        if self.scheduler.grace_ms < 2000 {
            return invalid(
                "scheduler.grace_ms".into(),
                format!(
                    "{} is too short: use at least 2000 (the scheduler commits its progress every second; the default is 60000)",
                    self.scheduler.grace_ms
                ),
            );
        }
        let mut names = std::collections::HashMap::new();
        for (i, s) in self.schedules.iter().enumerate() {
            if let Err(e) = s.compile() {
                return invalid(format!("schedules[{i}].{}", e.field), e.message);
            }
            if let Some(first) = names.insert(s.name.as_str(), i) {
                return invalid(
                    format!("schedules[{i}].name"),
                    format!(
                        "`{}` is also the name of schedules[{first}]: names are unique",
                        s.name
                    ),
                );
            }
        }
        Ok(())
    }
}
