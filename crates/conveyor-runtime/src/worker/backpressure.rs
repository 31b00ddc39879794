//! Backpressure: when the buffer stays full, or one partition's jobs pile up behind a busy key
//! (or, with priorities, a topic holds more than its share), partitions are paused and polling
//! goes on.

use super::*;

impl Scheduler {
    /// Pauses a partition when the buffer has been full (`max_buffered` unfinished records, or
    /// `max_delayed_bytes` of delayed jobs waiting in memory) for [`STALL`], or when half of it
    /// is jobs of this partition waiting behind a busy key (a key stuck in retries must not
    /// starve the other partitions); resumes it once both fall to half.
    /// Pausing costs a refetch on Kafka, so a buffer that is full only briefly just stops polling. Records are never
    /// dropped: a paused partition resumes where it stopped. Returns whether the worker is
    /// stalled (full for `STALL` or longer), in which case it polls while paused.
    pub(super) fn backpressure(&mut self, max_buffered: usize) -> bool {
        let cap = partition_share(max_buffered);
        let full = self.load() >= max_buffered;
        match full {
            true => {
                self.pauses.full_since.get_or_insert_with(Instant::now);
            }
            false => self.pauses.full_since = None,
        }
        let stalled = self.pauses.full_since.is_some_and(|t| t.elapsed() >= STALL);
        let relieved = self.load() <= max_buffered / 2
            && self.timers.due.bytes() <= self.shared.options.max_delayed_bytes / 2;
        let over_share = self.over_share(max_buffered);
        // the rule on jobs waiting behind busy keys keeps one partition from starving the
        // others; a worker with one partition has none to starve, and pausing it (a refetch on
        // Kafka each time it resumes) held a one-partition, 1,000-key workload to a fifth of
        // its rate
        let others = self.partitions.tracks.len() > 1;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        let mut unpark = Vec::new();
        for tp in self
            .partitions
            .tracks
            .keys()
            .filter(|tp| !self.pauses.admin_paused.contains(*tp))
        {
            let n = self.keys.waiting.get(tp).copied().unwrap_or(0);
            let paused = self.pauses.paused.contains(tp);
            // jobs waiting behind keys held for retries in the tiers: pausing would keep the
            // retries (new records of this partition) from coming back, so at the bound the
            // keys go instead; so do keys of a partition paused anyway (a full buffer, a topic
            // over its share) whose retry is due: it cannot be fetched until then
            let now = Instant::now();
            let stuck = self
                .keys
                .parked
                .values()
                .any(|p| p.tp == *tp && (n >= cap || (paused && p.until <= now + PARK_GRACE)));
            if stuck {
                unpark.push(tp.clone());
                continue;
            }
            if !paused && (stalled || (others && n >= cap) || over_share.contains(&tp.topic)) {
                pause.push(tp.clone());
            } else if paused && relieved && (!others || n <= cap / 2) {
                resume.push(tp.clone());
            }
        }
        if !unpark.is_empty() {
            let lanes: Vec<LaneKey> = self
                .keys
                .parked
                .iter()
                .filter(|(_, p)| unpark.contains(&p.tp))
                .map(|(k, _)| k.clone())
                .collect();
            tracing::warn!(
                keys = lanes.len(),
                "half the buffer is jobs waiting behind keys whose jobs retry in a delay tier; those keys go on without them (their order is given up)"
            );
            for lane in lanes {
                self.keys.parked.remove(&lane);
                self.release_key(Some(&lane));
            }
        }
        if !pause.is_empty() {
            match self.sub.pause(&pause) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = pause.len(),
                        buffered = self.partitions.buffered,
                        "backpressure: paused"
                    );
                    self.pauses.paused.extend(pause);
                }
                Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
            }
        }
        if !resume.is_empty() {
            match self.sub.resume(&resume) {
                Ok(()) => {
                    tracing::debug!(
                        partitions = resume.len(),
                        buffered = self.partitions.buffered,
                        "backpressure: resumed"
                    );
                    for tp in &resume {
                        self.pauses.paused.remove(tp);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume partitions"),
            }
        }
        stalled
    }

    /// With priorities, once the buffer is three quarters full: the topics holding more of it
    /// than their weight's share (their partitions are paused until it is half empty, so a
    /// low-priority backlog cannot take the room high-priority jobs need to be fetched).
    pub(super) fn over_share(&self, max_buffered: usize) -> HashSet<String> {
        let Some(p) = &self.shared.options.priorities else {
            return HashSet::new();
        };
        // delayed jobs waiting in memory for their due time are not the buffer's
        let buffered = self
            .partitions
            .buffered
            .saturating_sub(self.timers.due.len());
        if buffered * 4 < max_buffered * 3 {
            return HashSet::new();
        }
        let topics = &self.shared.options.topics;
        let total: u64 = topics.iter().map(|t| u64::from(p.weight(t))).sum();
        let mut held: HashMap<&str, usize> = HashMap::new();
        for (tp, t) in &self.partitions.tracks {
            *held.entry(tp.topic.as_str()).or_default() += t.offsets.in_flight();
        }
        for (topic, n) in held.iter_mut() {
            *n = n.saturating_sub(self.timers.due.of_topic(topic));
        }
        topics
            .iter()
            .filter(|t| {
                let share = max_buffered as u64 * u64::from(p.weight(t)) / total.max(1);
                held.get(t.as_str()).copied().unwrap_or(0) as u64 > share.max(1)
            })
            .cloned()
            .collect()
    }
}
