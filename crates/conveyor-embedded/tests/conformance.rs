//! The shared conformance suite, run against the embedded backend.

use std::sync::Arc;

use async_trait::async_trait;
use conveyor_conformance::{conformance_tests, Features, Harness};
use conveyor_core::{Backend, Result};
use conveyor_embedded::{EmbeddedBackend, EmbeddedConfig};

struct Embedded {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Harness for Embedded {
    async fn open(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(EmbeddedBackend::open(EmbeddedConfig::new(
            self.dir.path(),
        ))?))
    }
}

conformance_tests!(
    Features::default(),
    Embedded {
        dir: tempfile::tempdir().expect("temp dir")
    }
);
