//! The conformance cases. Each takes the harness and the backend's features and panics on a
//! violation of the contract in `conveyor_core::backend`.
//!
//! By feature: `publish` (publishing), `groups` (membership, start positions, pauses), `commits`
//! (committed offsets, redelivery, fencing), `topics` (topic errors and settings) and
//! `transactions` (transactional commits). Every case is re-exported here, where
//! [`conformance_tests!`](crate::conformance_tests) names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conveyor_core::partitioner::partition_for_key;
use conveyor_core::topic::{plan, CleanupPolicy, PlanAction};
use conveyor_core::{
    Backend, CommitOffset, Error, Headers, Poll, Record, StartFrom, SubscribeOptions,
    TopicPartition, TopicSpec,
};

use crate::util::{collect, drain, settle, topic, unique, values, wait_assigned};
use crate::{Features, Harness};

async fn open(h: &dyn Harness) -> Arc<dyn Backend> {
    h.open().await.expect("open backend")
}

fn numbered(n: usize) -> Vec<Record> {
    (0..n).map(|i| Record::new(format!("m{i}"))).collect()
}

mod commits;
mod groups;
mod publish;
mod topics;
mod transactions;

pub use commits::*;
pub use groups::*;
pub use publish::*;
pub use topics::*;
pub use transactions::*;
