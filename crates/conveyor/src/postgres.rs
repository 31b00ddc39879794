//! `conveyor postgres migrate`, `relay` and `prune-inbox`: wiring only; the logic lives in
//! `conveyor-postgres`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use conveyor_core::Backend;
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};
use conveyor_kafka::KafkaBackend;
use conveyor_postgres::{Relay, RelayOptions};

use crate::cli::PostgresCommand;

pub(crate) async fn run(
    command: PostgresCommand,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    match command {
        PostgresCommand::Migrate { database } => {
            let pool = conveyor_postgres::connect(&database.database_url).await?;
            conveyor_postgres::migrate(&pool).await?;
            eprintln!("conveyor postgres migrate: conveyor's tables are up to date");
            Ok(())
        }
        PostgresCommand::PruneInbox {
            database,
            inbox,
            older_than,
        } => {
            let pool = conveyor_postgres::connect(&database.database_url).await?;
            let deleted = conveyor_postgres::Inbox::new(pool)
                .with_name(inbox.clone())
                .prune(*older_than)
                .await?;
            eprintln!(
                "conveyor postgres prune-inbox: deleted {deleted} ids of inbox `{inbox}` recorded more than {older_than} ago"
            );
            Ok(())
        }
        PostgresCommand::Relay {
            database,
            backend,
            brokers,
            data_dir,
            batch,
        } => {
            let pool = conveyor_postgres::connect(&database.database_url).await?;
            let backend: Arc<dyn Backend> = match backend.as_str() {
                "embedded" => {
                    let log = data_dir.join("log");
                    eprintln!(
                        "conveyor postgres relay: embedded backend in {}",
                        log.display()
                    );
                    Arc::new(
                        EmbeddedBackend::open(EmbeddedConfig::new(&log)).with_context(|| {
                            format!(
                                "opening the embedded log in {} (is `conveyor dev` running on it?)",
                                log.display()
                            )
                        })?,
                    )
                }
                "kafka" => {
                    eprintln!("conveyor postgres relay: kafka backend at {brokers}");
                    let settings = conveyor_server::config::KafkaSettings {
                        brokers,
                        ..Default::default()
                    };
                    Arc::new(KafkaBackend::connect(settings.to_config())?)
                }
                other => bail!("unknown backend `{other}`: use `embedded` or `kafka`"),
            };
            let relay = Relay::new(pool, Arc::clone(&backend)).options(RelayOptions {
                batch,
                ..RelayOptions::default()
            });
            let stats = relay.stats();
            let result = relay.run(stop).await;
            eprintln!(
                "conveyor postgres relay: published {} rows in {} publishes",
                stats.published(),
                stats.rounds()
            );
            backend.close().await?;
            Ok(result?)
        }
    }
}
