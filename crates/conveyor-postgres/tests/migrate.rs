//! Migrations run by several processes starting at once (an API and three workers, as in the
//! orders example): each waits for sqlx's migration lock and all succeed, and a second run
//! applies nothing. A migration building an index `CONCURRENTLY` deadlocked here (it waits for
//! every other transaction, including the ones waiting for the lock it holds).

use conveyor_postgres::testing::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_started_at_once_by_several_processes_all_succeed() {
    let db = TestDb::new().await;
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url().to_owned();
        runs.spawn(async move {
            let pool = conveyor_postgres::connect(&url).await.unwrap();
            conveyor_postgres::migrate(&pool).await
        });
    }
    while let Some(run) = runs.join_next().await {
        run.unwrap()
            .expect("a migration run started alongside others");
    }
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        conveyor_postgres::migrate::MIGRATOR.iter().count()
    );
    conveyor_postgres::migrate(db.pool()).await.expect("again");
}
