//! The inbox on a real PostgreSQL and a real worker (embedded backend): a message id runs once
//! however often it is delivered, a failed handler leaves nothing behind and runs again, a job
//! without a message id is dead-lettered without running, and two deliveries of one id at once
//! (a zombie) do not both write: the second waits on the first's key, then sees it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conveyor_core::{Backend, Record, TopicSpec};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_postgres::testing::TestDb;
use conveyor_postgres::{Inbox, Outbox};
use conveyor_runtime::{handler_fn, Client, Job, JobError, NewJob, Worker};
use sqlx::PgPool;

#[derive(serde::Serialize, serde::Deserialize)]
struct Effect {
    n: i64,
}

async fn effects_table(pool: &PgPool) {
    // no uniqueness anywhere: only the inbox can keep a row from being written twice
    sqlx::query("CREATE TABLE effects (message_id text NOT NULL, n bigint NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

async fn counts(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM effects")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap())
}

/// Waits (at most 30 s) until `done` holds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_and_second_copies_run_once_and_failures_roll_back() {
    let db = TestDb::migrated().await;
    effects_table(db.pool()).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(&dir);
    backend
        .create_topic(&TopicSpec::new("effects", 2))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&backend));
    // 50 jobs, each published three times with its id (a client retrying after timeouts)
    for n in 0..50i64 {
        let job = NewJob::json("effect", &Effect { n })
            .unwrap()
            .with_id(format!("job-{n}"))
            .with_key(format!("k{n}")); // keyed: the copies run one after the other
        for _ in 0..3 {
            client.enqueue("effects", job.clone()).await.unwrap();
        }
    }
    let inbox = Inbox::new(db.pool().clone());
    let handler_runs = Arc::new(AtomicUsize::new(0));
    let runs = Arc::clone(&handler_runs);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::builder(Arc::clone(&backend), "writers", ["effects"])
        .concurrency(8)
        .job(
            "effect",
            inbox.job(move |mut tx, e: Effect, job: Job| {
                let runs = Arc::clone(&runs);
                async move {
                    sqlx::query("INSERT INTO effects (message_id, n) VALUES ($1, $2)")
                        .bind(job.id().unwrap())
                        .bind(e.n)
                        .execute(&mut *tx)
                        .await?;
                    runs.fetch_add(1, Ordering::SeqCst);
                    // every 7th job fails its first attempt after writing: rolled back, retried
                    if e.n % 7 == 0 && job.attempt == 1 {
                        return Err(JobError::retry("first attempt fails after its insert"));
                    }
                    Ok(tx)
                }
            }),
        )
        .build();
    let stats = worker.stats();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("150 deliveries", async || stats.finished() >= 150).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    let (rows, distinct) = counts(db.pool()).await;
    let s = inbox.stats();
    println!(
        "inbox: {rows} rows ({distinct} distinct) from 150 deliveries of 50 ids; ran {}, duplicates {}, rolled back {}; handler runs {}",
        s.ran(),
        s.duplicates(),
        s.rolled_back(),
        handler_runs.load(Ordering::SeqCst)
    );
    assert_eq!(
        (rows, distinct),
        (50, 50),
        "each message id's rows written once"
    );
    assert_eq!(s.ran(), 50);
    assert_eq!(
        s.duplicates(),
        100,
        "the second and third copies were acknowledged without running"
    );
    assert_eq!(s.rolled_back(), 8, "jobs 0, 7, ..., 49 failed once");
    assert!(inbox.contains("job-3").await.unwrap());
    assert!(!inbox.contains("job-50").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_message_id_is_dead_lettered_without_running() {
    let db = TestDb::migrated().await;
    effects_table(db.pool()).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(&dir);
    backend
        .create_topic(&TopicSpec::new("bare", 1))
        .await
        .unwrap();
    backend
        .create_topic(&TopicSpec::new("bare.dlq", 1))
        .await
        .unwrap();
    // a foreign producer's record: a job type, no message_id
    let record = Record::new(&b"{\"n\": 1}"[..]).with_header("job_type", "effect");
    backend.publish("bare", vec![record]).await.unwrap();
    let inbox = Inbox::new(db.pool().clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::builder(Arc::clone(&backend), "writers", ["bare"])
        .handler(
            "effect",
            inbox.handler(|mut tx, e: Effect, _job| async move {
                sqlx::query("INSERT INTO effects (message_id, n) VALUES ('none', $1)")
                    .bind(e.n)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }),
        )
        .build();
    let stats = worker.stats();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("the dead letter", async || stats.finished() >= 1).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let dead = backend.fetch("bare.dlq", 0, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "dead-lettered");
    let error = dead[0].headers.get_str("dlq_error").unwrap().to_owned();
    println!("dead letter: {error}");
    assert!(error.contains("no message_id header"), "{error}");
    assert_eq!(counts(db.pool()).await, (0, 0), "the handler did not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_id_at_once_write_once() {
    let db = TestDb::migrated().await;
    effects_table(db.pool()).await;
    // a real Job, as a worker hands it out
    let dir = tempfile::tempdir().unwrap();
    let backend = embedded(&dir);
    backend.create_topic(&TopicSpec::new("z", 1)).await.unwrap();
    Client::new(Arc::clone(&backend))
        .enqueue(
            "z",
            NewJob::json("effect", &Effect { n: 1 })
                .unwrap()
                .with_id("zombie-1"),
        )
        .await
        .unwrap();
    let seen: Arc<Mutex<Option<Job>>> = Arc::default();
    let keep = Arc::clone(&seen);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::builder(Arc::clone(&backend), "g", ["z"])
        .handler(
            "effect",
            handler_fn(move |job: Job| {
                *keep.lock().unwrap() = Some(job);
                async {}
            }),
        )
        .build();
    let stats = worker.stats();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    until("the job", async || stats.finished() >= 1).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let job = seen.lock().unwrap().clone().unwrap();

    let inbox = Inbox::new(db.pool().clone());
    let (inside, first_inside) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    // the first delivery writes and then stalls inside its transaction (a member that lost its
    // partitions and does not know it yet)
    let first = {
        let (inbox, job) = (inbox.clone(), job.clone());
        tokio::spawn(async move {
            inbox
                .run(job, |mut tx, job| async move {
                    sqlx::query("INSERT INTO effects VALUES ($1, 1)")
                        .bind(job.id().unwrap())
                        .execute(&mut *tx)
                        .await?;
                    inside.send(()).unwrap();
                    released.await.unwrap();
                    Ok(tx)
                })
                .await
        })
    };
    first_inside.await.unwrap();
    let second_ran = Arc::new(AtomicUsize::new(0));
    let second = {
        let (inbox, ran) = (inbox.clone(), Arc::clone(&second_ran));
        tokio::spawn(async move {
            inbox
                .run(job, |mut tx, job| async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    sqlx::query("INSERT INTO effects VALUES ($1, 2)")
                        .bind(job.id().unwrap())
                        .execute(&mut *tx)
                        .await?;
                    Ok(tx)
                })
                .await
        })
    };
    // the second delivery's insert waits on the first's uncommitted key
    let pool = db.pool().clone();
    until("the second delivery to wait on a lock", async || {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO conveyor_inbox%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    assert!(!second.is_finished());
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    println!(
        "zombie: second delivery ran its handler {} times; inbox duplicates {}",
        second_ran.load(Ordering::SeqCst),
        inbox.stats().duplicates()
    );
    assert_eq!(
        second_ran.load(Ordering::SeqCst),
        0,
        "the second delivery saw the id"
    );
    assert_eq!(counts(db.pool()).await, (1, 1));
    assert_eq!(inbox.stats().duplicates(), 1);
}

#[tokio::test]
async fn migrations_run_twice_and_their_absence_is_named() {
    let db = TestDb::new().await;
    let mut conn = db.pool().acquire().await.unwrap();
    let e = Outbox::enqueue(&mut conn, "t", NewJob::raw("x", "{}", None))
        .await
        .unwrap_err();
    println!("before migrating: {e}");
    assert!(
        matches!(e, conveyor_postgres::Error::NotMigrated("conveyor_outbox")),
        "{e}"
    );
    assert!(e.to_string().contains("conveyor postgres migrate"));
    drop(conn);
    conveyor_postgres::migrate(db.pool()).await.unwrap();
    conveyor_postgres::migrate(db.pool()).await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    Outbox::enqueue(&mut conn, "t", NewJob::raw("x", "{}", None))
        .await
        .unwrap();
    assert_eq!(Outbox::pending(&mut conn).await.unwrap(), 1);
}

/// A request the inbox already ran (a caller retrying with the same id) is acknowledged without
/// running and without a second answer: the caller gets the handler's value once, never a
/// `null` that looks like a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_inbox_already_ran_is_not_answered_again() {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).unwrap());
    backend
        .create_topic(&TopicSpec::new("quotes", 1))
        .await
        .unwrap();
    let inbox = Inbox::new(db.pool().clone()).with_name("quoters");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::builder(Arc::clone(&backend), "quoters", ["quotes"])
        .job(
            "quote",
            inbox.job(|tx, n: i64, job: Job| async move {
                job.reply(&(n * 2))?;
                Ok::<_, JobError>(tx)
            }),
        )
        .build();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let client = Client::new(Arc::clone(&backend));
    let job = NewJob::json("quote", &21i64).unwrap().with_id("quote-1");
    let first = client
        .request("quotes", job.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(&first.value[..], b"42");
    let again = client.request("quotes", job, Duration::from_secs(2)).await;
    assert!(
        matches!(again, Err(conveyor_core::Error::RequestTimeout { .. })),
        "the repeat must get no second answer: {again:?}"
    );
    assert_eq!(inbox.stats().duplicates(), 1);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// `Inbox::prune` deletes this inbox's ids recorded before the cut-off, in batches (more than
/// one batch here), and nothing newer nor another inbox's; under a second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_forgets_only_this_inboxs_old_ids() {
    let db = TestDb::migrated().await;
    let old = conveyor_postgres::inbox::PRUNE_BATCH * 2 + 17;
    for (inbox, n, age) in [
        ("a", old, "2 hours"),
        ("a", 10, "1 minute"),
        ("b", 5, "2 hours"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO conveyor_inbox (inbox, message_id, topic, \"partition\", \"offset\", processed_at) \
             SELECT $1, $1 || '-' || $3 || '-' || i, 't', 0, i, now() - interval '{age}' \
             FROM generate_series(1, $2) AS i"
        ))
        .bind(inbox)
        .bind(n)
        .bind(age.replace(' ', ""))
        .execute(db.pool())
        .await
        .unwrap();
    }
    let a = Inbox::new(db.pool().clone()).with_name("a");
    assert!(a.contains("a-2hours-1").await.unwrap());
    assert_eq!(
        a.prune(Duration::from_secs(3600)).await.unwrap(),
        old as u64
    );
    assert!(!a.contains("a-2hours-1").await.unwrap());
    assert!(a.contains("a-1minute-1").await.unwrap());
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT inbox, count(*) FROM conveyor_inbox GROUP BY inbox ORDER BY inbox")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(left, vec![("a".to_owned(), 10), ("b".to_owned(), 5)]);
    // nothing older is left: a second run deletes nothing
    assert_eq!(a.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    let err = a.prune(Duration::from_millis(999)).await.unwrap_err();
    assert!(
        matches!(err, conveyor_postgres::Error::InvalidArgument(_)),
        "{err}"
    );
}
