//! Topics: unknown topics are errors, settings are read and changed, added partitions are used.

use super::*;

/// Publishing to, subscribing to or fetching from a missing topic is `UnknownTopic`.
pub async fn unknown_topics_are_errors(h: &dyn Harness, f: &Features) {
    let b = open(h).await;
    let missing = unique("missing");
    assert!(matches!(
        b.publish(&missing, numbered(1)).await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        b.subscribe(SubscribeOptions::new(unique("g"), [missing.clone()]))
            .await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        b.fetch(&missing, 0, 0, 1).await,
        Err(Error::UnknownTopic(_))
    ));
    assert!(b
        .describe_topic(&missing)
        .await
        .expect("describe")
        .is_none());
    let _ = f;
}

/// A topic's settings read back as created, change with `update_topic`, and a plan against the
/// changed topic is empty. Shrinking and unknown topics are errors.
pub async fn topic_settings_are_read_and_changed(h: &dyn Harness, f: &Features) {
    if !f.read_topic_config {
        return;
    }
    let b = open(h).await;
    let name = unique("settings");
    let mut spec = TopicSpec::new(&name, 2);
    spec.retention_ms = Some(24 * 3600 * 1000);
    b.create_topic(&spec).await.expect("create");
    let current = b
        .topic_spec(&name)
        .await
        .expect("topic_spec")
        .expect("exists");
    assert_eq!(current.partitions, 2);
    assert_eq!(current.retention_ms, Some(24 * 3600 * 1000));
    assert_eq!(current.cleanup_policy, CleanupPolicy::Delete);
    assert_eq!(plan(&spec, Some(&current)).action, PlanAction::Unchanged);
    assert!(b
        .topic_spec(&unique("missing"))
        .await
        .expect("topic_spec")
        .is_none());
    if !f.alter_topic_config {
        return;
    }

    let mut changed = spec.clone();
    changed.retention_ms = Some(2 * 24 * 3600 * 1000);
    changed.retention_bytes = Some(64 * 1024 * 1024);
    assert_eq!(plan(&changed, Some(&current)).action, PlanAction::Update);
    b.update_topic(&changed).await.expect("update");
    let after = b
        .topic_spec(&name)
        .await
        .expect("topic_spec")
        .expect("exists");
    assert_eq!(after.retention_ms, changed.retention_ms);
    assert_eq!(after.retention_bytes, changed.retention_bytes);
    assert_eq!(plan(&changed, Some(&after)).action, PlanAction::Unchanged);

    let mut fewer = changed.clone();
    fewer.partitions = 1;
    assert!(matches!(
        b.update_topic(&fewer).await,
        Err(Error::TopicConflict { .. })
    ));
    assert!(b
        .topic_spec(&unique("missing"))
        .await
        .expect("topic_spec")
        .is_none());
    assert!(matches!(
        b.update_topic(&TopicSpec::new(unique("missing"), 2)).await,
        Err(Error::UnknownTopic(_))
    ));
}

/// Added partitions exist, keep the old records, receive keys by the new count and are assigned
/// to a group.
pub async fn added_partitions_are_used(h: &dyn Harness, f: &Features) {
    if !f.add_partitions {
        return;
    }
    let b = open(h).await;
    let name = unique("grow");
    let spec = TopicSpec::new(&name, 2);
    b.create_topic(&spec).await.expect("create");
    b.publish(&name, numbered(10)).await.expect("publish");
    let grown = TopicSpec {
        partitions: 4,
        ..spec
    };
    let info = b.update_topic(&grown).await.expect("add partitions");
    assert_eq!(info.partition_count(), 4);
    assert_eq!(info.retained(), 10, "old records are kept");
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let records = keys
        .iter()
        .map(|k| Record::new("v").with_key(k.clone()))
        .collect();
    let at = b.publish(&name, records).await.expect("publish");
    for (k, p) in keys.iter().zip(&at) {
        assert_eq!(p.partition, partition_for_key(k.as_bytes(), 4), "key {k}");
    }
    let mut sub = b
        .subscribe(SubscribeOptions::new(unique("g"), [name.clone()]))
        .await
        .expect("subscribe");
    let got = collect(&mut *sub, 50, f.timeout).await;
    assert_eq!(got.len(), 50);
    let parts: BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    assert_eq!(parts.len(), 4, "records from every partition");
}
