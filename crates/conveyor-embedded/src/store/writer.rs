//! The store's writer thread ([`Store::run_writer`]): every change goes through it. It takes all
//! requests waiting in its queue and writes them as one fjall batch (topic creations and
//! updates, appends, atomic appends-and-commits), runs retention (records past their topic's
//! retention, ended unique-key claims) when it is due, and only then publishes the new high
//! watermarks and answers the callers.

use super::*;

impl Store {
    /// When retention runs next: one interval from now (an interval too long for the clock,
    /// which the configuration refuses, means a year).
    fn next_retention(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.config.retention_interval)
            .unwrap_or_else(|| now + Duration::from_secs(366 * 24 * 3600))
    }

    pub(super) fn run_writer(self: Arc<Self>, rx: mpsc::Receiver<WriteOp>) {
        let mut next_retention = self.next_retention();
        let mut pending: Vec<WriteOp> = Vec::new();
        // when the high watermarks are next recorded (None: nothing new to record)
        let mut next_marks: Option<Instant> = None;
        loop {
            let due = next_marks.map_or(next_retention, |m| m.min(next_retention));
            let wait = due.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout)
                    if next_marks.is_some_and(|m| m <= Instant::now()) =>
                {
                    self.record_watermarks();
                    next_marks = None;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.apply_retention(now_millis()) {
                        tracing::error!(error = %e, "retention failed; will try again");
                    }
                    next_retention = self.next_retention();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            pending.push(first);
            let mut records = 0;
            while records < self.config.max_group_commit {
                match rx.try_recv() {
                    Ok(op) => {
                        if let WriteOp::Publish { parts, .. } = &op {
                            records += parts.iter().map(|(_, r)| r.len()).sum::<usize>();
                        }
                        pending.push(op);
                    }
                    Err(_) => break,
                }
            }
            let mut publishes = Vec::new();
            // released after the writes below
            let mut holds = Vec::new();
            for op in pending.drain(..) {
                match op {
                    WriteOp::Publish {
                        parts,
                        commit,
                        reply,
                        hold,
                    } => {
                        publishes.push((parts, commit, reply));
                        holds.extend(hold);
                    }
                    WriteOp::CreateTopic { spec, reply } => {
                        self.write_publishes(std::mem::take(&mut publishes));
                        let _ = reply.send(self.do_create_topic(spec));
                    }
                    WriteOp::UpdateTopic { spec, reply } => {
                        self.write_publishes(std::mem::take(&mut publishes));
                        let _ = reply.send(self.do_update_topic(spec));
                    }
                    WriteOp::Retention { now, reply } => {
                        self.write_publishes(std::mem::take(&mut publishes));
                        let _ = reply.send(self.apply_retention(now));
                    }
                    WriteOp::Shutdown { reply } => {
                        self.write_publishes(std::mem::take(&mut publishes));
                        let result = self
                            .db
                            .persist(PersistMode::SyncAll)
                            .map_err(|e| self.health.write_failed(&e));
                        if result.is_ok() {
                            self.record_watermarks();
                        }
                        let _ = reply.send(result);
                        return;
                    }
                }
            }
            self.write_publishes(publishes);
            drop(holds);
            // also under a steady stream of writes, where recv_timeout never times out
            if *next_marks.get_or_insert_with(|| Instant::now() + WATERMARK_INTERVAL)
                <= Instant::now()
            {
                self.record_watermarks();
                next_marks = None;
            }
            // a steady stream of writes never lets recv_timeout time out: run retention when
            // it is due whatever the traffic
            if Instant::now() >= next_retention {
                if let Err(e) = self.apply_retention(now_millis()) {
                    tracing::error!(error = %e, "retention failed; will try again");
                }
                next_retention = self.next_retention();
            }
        }
    }

    fn do_create_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        if let Some(existing) = self.topic(&spec.name) {
            if existing.spec.partitions != spec.partitions {
                return Err(Error::TopicConflict {
                    topic: spec.name,
                    existing: existing.spec.partitions,
                    requested: spec.partitions,
                });
            }
            return Ok(existing.info());
        }
        self.write_topic(spec, 0)
    }

    /// Rewrites the topic's metadata and adds zeroed partitions; the partition metadata written
    /// with every append is current, so the topic reloads from it with its watermarks intact.
    fn do_update_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        let existing = self.topic_or_err(&spec.name)?;
        let old = existing.spec.partitions;
        if spec.partitions < old {
            return Err(Error::TopicConflict {
                topic: spec.name,
                existing: old,
                requested: spec.partitions,
            });
        }
        if spec == existing.spec {
            return Ok(existing.info());
        }
        self.write_topic(spec, old)
    }

    /// Stores `spec` with zeroed metadata for partitions `new_from..`, then (re)loads the topic
    /// from the stored metadata and makes it visible.
    fn write_topic(&self, spec: TopicSpec, new_from: i32) -> Result<TopicInfo> {
        let json = serde_json::to_vec(&spec).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut batch = self.db.batch().durability(self.persist_mode());
        batch.insert(&self.meta, topic_meta_key(&spec.name), json);
        for p in new_from..spec.partitions {
            batch.insert(
                &self.meta,
                part_meta_key(&spec.name, p),
                encode_part(0, 0, 0),
            );
        }
        batch.commit().map_err(|e| self.health.write_failed(&e))?;
        let log = Self::load_topic(&self.db, &self.meta, spec)?;
        let info = log.info();
        self.topics
            .write()
            .expect("topics lock")
            .insert(log.spec.name.clone(), Arc::new(log));
        self.changes.send_modify(|v| *v += 1);
        Ok(info)
    }

    /// Encodes one publish request, choosing partitions. Nothing is written yet.
    fn prepare(&self, log: &TopicLog, records: Vec<Record>, now: i64) -> Result<Vec<(i32, Bytes)>> {
        let n = log.spec.partitions;
        records
            .into_iter()
            .map(|r| {
                let size = r.byte_len();
                if size > self.config.max_record_bytes {
                    return Err(Error::RecordTooLarge {
                        size,
                        max: self.config.max_record_bytes,
                    });
                }
                if r.headers
                    .iter()
                    .any(|(name, v)| name.len() > u16::MAX as usize || v.len() > u32::MAX as usize)
                {
                    return Err(Error::InvalidArgument(
                        "header name longer than 65535 bytes".into(),
                    ));
                }
                let p = match (r.partition, &r.key) {
                    (Some(p), _) if (0..n).contains(&p) => p,
                    (Some(p), _) => {
                        return Err(Error::UnknownPartition {
                            topic: log.spec.name.clone(),
                            partition: p,
                        })
                    }
                    (None, Some(k)) => partition_for_key(k, n),
                    (None, None) => {
                        (log.round_robin.fetch_add(1, Ordering::Relaxed) % n as u32) as i32
                    }
                };
                Ok((
                    p,
                    encode(
                        r.timestamp.unwrap_or(now),
                        r.key.as_ref(),
                        &r.headers,
                        &r.value,
                    ),
                ))
            })
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn write_publishes(
        &self,
        publishes: Vec<(
            Vec<(String, Vec<Record>)>,
            Option<(String, Vec<CommitOffset>)>,
            oneshot::Sender<Result<Vec<Position>>>,
        )>,
    ) {
        if publishes.is_empty() {
            return;
        }
        let now = now_millis();
        let mut batch = self.db.batch().durability(self.persist_mode());
        // Tentative (high, bytes) per touched partition, applied only after the commit succeeds.
        let mut touched: HashMap<(String, i32), (Arc<TopicLog>, i64, u64)> = HashMap::new();
        let mut replies = Vec::with_capacity(publishes.len());
        for (parts, commit, reply) in publishes {
            // every part is checked and encoded before any is added: one failing part fails
            // the whole write
            let prepared: Result<Vec<_>> = parts
                .into_iter()
                .map(|(topic, records)| {
                    let log = self.topic_or_err(&topic)?;
                    Ok((topic, self.prepare(&log, records, now)?, log))
                })
                .collect();
            let prepared = match prepared {
                Ok(v) => v,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let mut positions = Vec::new();
            for (topic, records, log) in prepared {
                for (p, raw) in records {
                    let entry = touched.entry((topic.clone(), p)).or_insert_with(|| {
                        let part = &log.parts[p as usize];
                        (
                            Arc::clone(&log),
                            part.high.load(Ordering::Acquire),
                            part.bytes.load(Ordering::Acquire),
                        )
                    });
                    let offset = entry.1;
                    entry.1 += 1;
                    entry.2 += raw.len() as u64;
                    batch.insert(&log.ks, log_key(p, offset), raw);
                    positions.push(Position {
                        partition: p,
                        offset,
                    });
                }
            }
            if let Some((group, offsets)) = commit {
                for c in &offsets {
                    insert_commit(&mut batch, &self.offsets, &group, c);
                }
            }
            replies.push((reply, positions));
        }
        for ((topic, p), (log, high, bytes)) in &touched {
            let low = log.parts[*p as usize].low.load(Ordering::Acquire);
            batch.insert(
                &self.meta,
                part_meta_key(topic, *p),
                encode_part(low, *high, *bytes),
            );
        }
        match batch.commit() {
            Ok(()) => {
                for ((_, p), (log, high, bytes)) in touched {
                    let part = &log.parts[p as usize];
                    part.bytes.store(bytes, Ordering::Release);
                    part.high.store(high, Ordering::Release);
                }
                self.changes.send_modify(|v| *v += 1);
                for (reply, positions) in replies {
                    let _ = reply.send(Ok(positions));
                }
            }
            Err(e) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(self.health.write_failed(&e)));
                }
            }
        }
    }

    /// Deletes records older than each topic's `retention_ms` and, beyond `retention_bytes`, the
    /// oldest records of each partition. Runs on the writer thread.
    fn apply_retention(&self, now: i64) -> Result<u64> {
        let topics: Vec<Arc<TopicLog>> = self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect();
        let mut deleted = 0u64;
        for log in topics {
            if log.spec.retention_ms.is_none() && log.spec.retention_bytes.is_none() {
                continue;
            }
            let cutoff = log.spec.retention_ms.map(|r| now - r);
            for (p, part) in log.parts.iter().enumerate() {
                let p = p as i32;
                let (low, high) = (
                    part.low.load(Ordering::Acquire),
                    part.high.load(Ordering::Acquire),
                );
                let mut bytes = part.bytes.load(Ordering::Acquire);
                let mut new_low = low;
                let mut batch = self.db.batch();
                for guard in log.ks.range(log_key(p, low)..log_key(p, high)) {
                    let (k, v) = guard.into_inner().map_err(storage)?;
                    let too_old =
                        cutoff.is_some_and(|c| timestamp_of(&v).map(|t| t < c).unwrap_or(false));
                    let too_big = log.spec.retention_bytes.is_some_and(|max| bytes > max);
                    if !(too_old || too_big) || batch.len() >= 100_000 {
                        break;
                    }
                    batch.remove(&log.ks, k.to_vec());
                    bytes = bytes.saturating_sub(v.len() as u64);
                    new_low = parse_log_key(&k)?.1 + 1;
                }
                if new_low == low {
                    continue;
                }
                deleted += (new_low - low) as u64;
                batch.insert(
                    &self.meta,
                    part_meta_key(&log.spec.name, p),
                    encode_part(new_low, high, bytes),
                );
                batch.commit().map_err(|e| self.health.write_failed(&e))?;
                part.low.store(new_low, Ordering::Release);
                part.bytes.store(bytes, Ordering::Release);
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "retention removed records");
        }
        let ended = self.forget_ended_claims(now)?;
        if ended > 0 {
            tracing::info!(
                ended,
                "retention removed unique-key claims whose hold ended"
            );
        }
        Ok(deleted)
    }

    /// Removes unique-key claims whose hold ended before `now` (at most [`CLAIMS_PER_RUN`] a
    /// run), so the claims kept are those of jobs still holding their key, not every key ever
    /// used. Found without the claims' lock, each checked again under it (it may have been
    /// claimed anew meanwhile).
    fn forget_ended_claims(&self, now: i64) -> Result<u64> {
        let mut ended = Vec::new();
        for guard in self.unique.iter() {
            let (k, v) = guard.into_inner().map_err(storage)?;
            if claim_until(&v).is_some_and(|until| until <= now) {
                ended.push(k.to_vec());
                if ended.len() >= CLAIMS_PER_RUN {
                    break;
                }
            }
        }
        if ended.is_empty() {
            return Ok(0);
        }
        let _one = self.unique_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = self.db.batch().durability(self.persist_mode());
        let mut removed = 0;
        for k in ended {
            let v = self.unique.get(&k).map_err(storage)?;
            if v.as_deref()
                .and_then(claim_until)
                .is_some_and(|until| until <= now)
            {
                batch.remove(&self.unique, k);
                removed += 1;
            }
        }
        batch.commit().map_err(|e| self.health.write_failed(&e))?;
        Ok(removed)
    }
}
