//! Settings of the embedded backend, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Each group commit is written to the operating system before it is acknowledged: survives a
    /// crash or `kill -9` of the process, not a power loss or kernel crash of the machine.
    Os,
    /// Each group commit is also `fsync`ed: survives a power loss. The default.
    #[default]
    Fsync,
}

/// How to open an [`EmbeddedBackend`](crate::EmbeddedBackend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Folder holding the log. Created when missing. Default: `.conveyor/data`.
    pub path: PathBuf,
    /// When an append is acknowledged. Default: [`Durability::Fsync`].
    pub durability: Durability,
    /// Largest accepted record (key + value + headers), in bytes. Default: 1 MiB, Kafka's default.
    pub max_record_bytes: usize,
    /// How often retention (age and size limits) runs. Default: 60 s.
    pub retention_interval: Duration,
    /// Most records written in one group commit. Default: 20,000.
    pub max_group_commit: usize,
}

impl EmbeddedConfig {
    /// The default settings with the log in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            durability: Durability::default(),
            max_record_bytes: 1024 * 1024,
            retention_interval: Duration::from_secs(60),
            max_group_commit: 20_000,
        }
    }
}
