//! The relay on a real PostgreSQL and the embedded backend: a row committed late with a lower
//! id is published when it commits (never skipped by a high-water mark), per-key order follows
//! the order of commits, rolled-back rows are never published, and a second relay waits for the
//! first's lock.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::{Backend, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_postgres::testing::TestDb;
use conveyor_postgres::{Outbox, Relay};
use conveyor_runtime::NewJob;

fn job(n: u32) -> NewJob {
    NewJob::json("n", &n).unwrap().with_key("one-key")
}

async fn ids_in_log(backend: &Arc<dyn Backend>) -> Vec<String> {
    let mut ids = Vec::new();
    for p in 0..1 {
        for r in backend.fetch("late", p, 0, 100).await.unwrap() {
            ids.push(r.headers.get_str("message_id").unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_with_a_lower_id_is_published_and_rollbacks_never_are() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("late", 1))
        .await
        .unwrap();
    let relay = Relay::new(db.pool().clone(), Arc::clone(&backend));

    let mut slow = db.pool().begin().await.unwrap(); // takes the lower id, commits last
    let low = Outbox::enqueue(&mut slow, "late", job(1)).await.unwrap();
    let mut fast = db.pool().begin().await.unwrap();
    let high = Outbox::enqueue(&mut fast, "late", job(2)).await.unwrap();
    fast.commit().await.unwrap();
    let mut undone = db.pool().begin().await.unwrap();
    let rolled = Outbox::enqueue(&mut undone, "late", job(3)).await.unwrap();
    undone.rollback().await.unwrap();

    assert_eq!(relay.drain().await.unwrap(), 1, "only the committed row");
    slow.commit().await.unwrap();
    assert_eq!(
        relay.drain().await.unwrap(),
        1,
        "the late one, published now"
    );
    assert_eq!(relay.drain().await.unwrap(), 0);
    let ids = ids_in_log(&backend).await;
    println!("published in order: {ids:?} (low id {low}, high id {high}, rolled back {rolled})");
    assert_eq!(ids, vec![high, low], "in the order of the commits");
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(Outbox::pending(&mut conn).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_waits_for_the_first() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("late", 1))
        .await
        .unwrap();
    let first = Relay::new(db.pool().clone(), Arc::clone(&backend));
    let first_stats = first.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(first.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first_stats.locked() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first relay never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = Relay::new(db.pool().clone(), Arc::clone(&backend));
    let second_stats = second.stats();
    let waiting = tokio::spawn(async move { second.drain().await });
    // the second one's session waits on the advisory lock
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relay waits on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(second_stats.locked(), 0);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 0);
    assert_eq!(
        second_stats.locked(),
        1,
        "it took the lock once the first stopped"
    );
}

/// Outbox rows carrying one unique key, committed by separate transactions (the outbox cannot
/// refuse at insert time): the backend stores the first and refuses the others as duplicates;
/// the relay marks those sent (counted as refused) and goes on, so the ordinary rows behind them
/// are published at once instead of the relay stopping or retrying until the hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_unique_rows_never_stall_the_relay() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend.create_topic(&TopicSpec::new("u", 1)).await.unwrap();
    let unique = |n: u32| {
        NewJob::json("j", &n)
            .unwrap()
            .unique("invoice-7", Duration::from_secs(3600))
    };
    // two rows of one key in one read of the relay, then (after a publish) one more with an
    // ordinary row behind it
    for n in 0..2 {
        let mut tx = db.pool().begin().await.unwrap();
        Outbox::enqueue(&mut tx, "u", unique(n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = db.pool().begin().await.unwrap();
    Outbox::enqueue(&mut tx, "u", NewJob::json("plain", &9).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(db.pool().clone(), Arc::clone(&backend));
    let stats = relay.stats();
    tokio::time::timeout(Duration::from_secs(10), relay.drain())
        .await
        .expect("the relay did not stall")
        .expect("the relay did not stop with an error");
    let mut tx = db.pool().begin().await.unwrap();
    Outbox::enqueue(&mut tx, "u", unique(3)).await.unwrap();
    Outbox::enqueue(&mut tx, "u", NewJob::json("plain", &10).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(db.pool().clone(), Arc::clone(&backend));
    let stats2 = relay.stats();
    tokio::time::timeout(Duration::from_secs(10), relay.drain())
        .await
        .expect("the relay did not stall")
        .expect("the relay did not stop with an error");
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        Outbox::pending(&mut conn).await.unwrap(),
        0,
        "nothing left behind"
    );
    let types: Vec<String> = backend
        .fetch("u", 0, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers.get_str("job_type").unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        vec!["j", "plain", "plain"],
        "one unique job and both plain ones"
    );
    assert_eq!(
        stats.refused() + stats2.refused(),
        2,
        "two duplicates refused"
    );
}
