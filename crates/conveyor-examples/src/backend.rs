//! Opening the backend an example runs on: `--backend embedded --data DIR` (the default, a
//! durable log in DIR) or `--backend kafka --brokers HOST:PORT`.

use std::path::PathBuf;
use std::sync::Arc;

use conveyor_core::Backend;

/// Which backend, from the command line.
#[derive(Debug, Clone)]
pub enum Which {
    /// The embedded log in this folder.
    Embedded(PathBuf),
    /// A Kafka cluster.
    Kafka(String),
}

impl Which {
    /// Reads `--backend`, `--data` and `--brokers` from `args` (the other arguments are left to
    /// the binary). Defaults: embedded in `./conveyor-data`.
    pub fn from_args(args: &[String]) -> anyhow::Result<Which> {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        match value("--backend").as_deref().unwrap_or("embedded") {
            "embedded" => Ok(Which::Embedded(
                value("--data")
                    .unwrap_or_else(|| "conveyor-data".into())
                    .into(),
            )),
            "kafka" => Ok(Which::Kafka(value("--brokers").ok_or_else(|| {
                anyhow::anyhow!("--backend kafka needs --brokers HOST:PORT")
            })?)),
            other => anyhow::bail!("unknown --backend `{other}`: use `embedded` or `kafka`"),
        }
    }

    /// Opens it.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(match self {
            Which::Embedded(dir) => Arc::new(conveyor_embedded::EmbeddedBackend::open(
                conveyor_embedded::EmbeddedConfig::new(dir),
            )?),
            Which::Kafka(brokers) => Arc::new(conveyor_kafka::KafkaBackend::connect(
                conveyor_kafka::KafkaConfig::new(brokers.clone()),
            )?),
        })
    }
}
