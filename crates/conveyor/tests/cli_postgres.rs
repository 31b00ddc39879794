//! `conveyor postgres migrate` and `conveyor postgres prune-inbox`, as a user runs them
//! against a real PostgreSQL (`conveyor_postgres::testing`: `CONVEYOR_TEST_POSTGRES`, else
//! 127.0.0.1:5432, else a throwaway server, else a clear failure).

mod util;

use conveyor_postgres::testing::TestDb;
use util::conveyor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_inbox_deletes_the_old_ids_of_one_inbox() {
    let db = TestDb::new().await;
    let (ok, _, err) = conveyor(&["postgres", "migrate", "--database-url", db.url()]);
    assert!(ok, "{err}");
    sqlx::query(
        "INSERT INTO conveyor_inbox (inbox, message_id, topic, \"partition\", \"offset\", processed_at) VALUES \
         ('mailer', 'old-1', 't', 0, 1, now() - interval '8 days'), \
         ('mailer', 'old-2', 't', 0, 2, now() - interval '8 days'), \
         ('mailer', 'new-1', 't', 0, 3, now() - interval '1 day'), \
         ('audit', 'old-1', 't', 0, 1, now() - interval '8 days')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let (ok, _, err) = conveyor(&[
        "postgres",
        "prune-inbox",
        "--database-url",
        db.url(),
        "--inbox",
        "mailer",
        "--older-than",
        "7d",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("deleted 2 ids of inbox `mailer`"), "{err}");
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT inbox, message_id FROM conveyor_inbox ORDER BY inbox, message_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let left: Vec<(&str, &str)> = left.iter().map(|(i, m)| (i.as_str(), m.as_str())).collect();
    assert_eq!(left, vec![("audit", "old-1"), ("mailer", "new-1")]);

    // a cut-off that would forget ids still being redelivered is refused, naming the fix
    let (ok, _, err) = conveyor(&[
        "postgres",
        "prune-inbox",
        "--database-url",
        db.url(),
        "--older-than",
        "0s",
    ]);
    assert!(!ok);
    assert!(err.contains("retention"), "{err}");
    // so is a malformed duration, by the argument parser
    let (ok, _, err) = conveyor(&[
        "postgres",
        "prune-inbox",
        "--database-url",
        db.url(),
        "--older-than",
        "a week",
    ]);
    assert!(!ok);
    assert!(err.contains("--older-than"), "{err}");
}
