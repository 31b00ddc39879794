//! Whether the log can still take writes.
//!
//! fjall poisons its database when a journal write, a sync or a background flush fails (a full
//! disk, an I/O error) and refuses every later write until it is opened again, advising a
//! restart. The store keeps the first such failure here, worded for the user (what happened and
//! what to do), and every refused write and [`conveyor_core::Backend::health`] report it.

use std::path::PathBuf;
use std::sync::OnceLock;

use conveyor_core::{Error, Result};
use fjall::{Database, PersistMode};

use crate::config::Durability;

/// The first write failure of one store.
#[derive(Debug)]
pub(crate) struct Health {
    path: PathBuf,
    durability: Durability,
    broken: OnceLock<String>,
}

impl Health {
    pub(crate) fn new(path: PathBuf, durability: Durability) -> Health {
        Health {
            path,
            durability,
            broken: OnceLock::new(),
        }
    }

    /// `Err` once a write failed, including one of fjall's own in the background (found by
    /// asking the database for a journal write to the OS, which a poisoned one refuses).
    pub(crate) fn check(&self, db: &Database) -> Result<()> {
        if self.broken.get().is_none() {
            if let Err(e) = db.persist(PersistMode::Buffer) {
                self.failed(&e);
            }
        }
        match self.broken.get() {
            None => Ok(()),
            Some(why) => Err(Error::Storage(why.clone())),
        }
    }

    /// The error of a write that failed with `e`; the first one is kept for every later write.
    pub(crate) fn write_failed(&self, e: &fjall::Error) -> Error {
        Error::Storage(self.failed(e).to_owned())
    }

    fn failed(&self, e: &fjall::Error) -> &str {
        self.broken.get_or_init(|| {
            let cause = match e {
                fjall::Error::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) =>
                {
                    format!("its disk is full: {io}")
                }
                fjall::Error::Poisoned => {
                    "an earlier write by the storage engine failed (a background flush or sync; \
                     its error is logged above)"
                        .to_owned()
                }
                other => other.to_string(),
            };
            let free = match rustix::fs::statvfs(&self.path) {
                Ok(v) => format!(
                    "{} MiB free there now",
                    v.f_bavail.saturating_mul(v.f_frsize) >> 20
                ),
                Err(e) => format!("free space unknown: {e}"),
            };
            let kept = match self.durability {
                Durability::Fsync => "Jobs acknowledged before were synced to disk and are kept",
                Durability::Os => {
                    "Jobs acknowledged before were handed to the OS (durability = \"os\"); \
                     they are kept unless the OS fails to write them too"
                }
            };
            let why = format!(
                "the embedded log at {} stopped taking writes: {cause} ({free}). {kept}. \
                 Free space on that disk (or fix it), then restart conveyor",
                self.path.display()
            );
            tracing::error!("{why}");
            why
        })
    }
}
