//! conveyor-conformance: the one test suite every backend passes.
//!
//! Modelled on Watermill's universal Pub/Sub tests. A backend crate calls
//! [`conformance_tests!`] from one of its `tests/` files with its [`Features`] and a function making
//! a [`Harness`]; the macro expands to one `#[tokio::test]` per case, so cases run in parallel and
//! fail by name. Each case uses its own topic and group, so cases never see each other's records.
//!
//! ```ignore
//! conveyor_conformance::conformance_tests!(Features::default(), || MyHarness::new());
//! ```
//!
//! Features both skip cases (no persistence: no restart case) and loosen checks (no fencing).
//!
//! # Layout
//! - [`Harness`], [`Features`]: how a backend plugs in.
//! - [`cases`]: the cases, each an `async fn(&dyn Harness, &Features)`.
//! - [`util`]: helpers shared by cases (unique names, collecting records with a deadline).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_core::{Backend, Result};

pub mod cases;
pub mod util;

/// Opens the backend under test. One harness per case.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Opens the backend. Called again after [`Backend::close`] to simulate a process restart: a
    /// persistent backend must then see everything the closed one acknowledged.
    async fn open(&self) -> Result<Arc<dyn Backend>>;
}

/// What the backend under test can do; cases skip or loosen their checks accordingly.
#[derive(Debug, Clone)]
pub struct Features {
    /// Records and committed offsets survive `close` and a new `open` (restart cases run).
    pub persistent: bool,
    /// Commits to a partition the member no longer owns fail with `NotAssigned`.
    pub fenced_commits: bool,
    /// Group members are assigned partitions promptly enough to test sharing between two members.
    pub consumer_groups: bool,
    /// How long a case waits for records before failing.
    pub timeout: Duration,
    /// Partitions of multi-partition test topics.
    pub partitions: i32,
    /// Topic settings can be read (`topic_spec`). Kafka: DescribeConfigs.
    pub read_topic_config: bool,
    /// Topic settings can be changed (`update_topic` without new partitions). Kafka: AlterConfigs.
    pub alter_topic_config: bool,
    /// Partitions can be added (`update_topic`). Kafka: CreatePartitions.
    pub add_partitions: bool,
    /// Transactions are honoured: records published with [`conveyor_core::TransactionalCommit`]
    /// appear only with their offsets. librdkafka's mock cluster accepts transactions without
    /// honouring them (its readers see aborted records, its transactional offsets are not kept).
    pub transactions: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            persistent: true,
            fenced_commits: true,
            consumer_groups: true,
            timeout: Duration::from_secs(20),
            partitions: 4,
            read_topic_config: true,
            alter_topic_config: true,
            add_partitions: true,
            transactions: true,
        }
    }
}

/// Expands to one `#[tokio::test]` per conformance case.
///
/// `$features` is a [`Features`] expression, `$harness` an expression producing a fresh
/// [`Harness`] (evaluated once per case).
#[macro_export]
macro_rules! conformance_tests {
    ($features:expr, $harness:expr) => {
        $crate::conformance_tests!(@cases $features, $harness;
            publish_consume_round_trip,
            publish_returns_contiguous_positions,
            same_key_same_partition_in_order,
            explicit_partition_is_honoured,
            headers_and_binary_payloads_survive,
            concurrent_publishers_lose_nothing,
            group_members_share_partitions,
            resume_from_committed_offset,
            unacknowledged_records_are_redelivered_after_restart,
            close_flushes_acknowledged_publishes,
            latest_start_skips_old_records,
            fetch_reads_from_an_offset,
            commits_to_revoked_partitions_are_fenced,
            unknown_topics_are_errors,
            committed_offsets_are_reported,
            commit_metadata_reaches_the_next_owner,
            stored_progress_survives_a_revocation,
            paused_partitions_resume_where_they_stopped,
            topic_settings_are_read_and_changed,
            added_partitions_are_used,
            partitions_assigned_again_start_unpaused,
            transactional_commits_publish_and_commit_together,
            transactional_commits_are_fenced,
        );
    };
    (@cases $features:expr, $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                let features: $crate::Features = $features;
                $crate::cases::$case(&harness, &features).await;
            }
        )*
    };
}
