//! A group member's transactional producer: how it is made ([`TxFactory`], the backend's
//! producer settings plus a `transactional.id` unique to the member) and its type
//! ([`TxProducer`]). The member's subscription holds both ([`crate::consumer`]); a transaction
//! uses the producer ([`crate::transaction`]), so both depend on this module and not on each
//! other.

use std::sync::Arc;
use std::time::Duration;

use conveyor_core::Result;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// `transaction.timeout.ms` of a member's producer (see [`TxFactory::create`]).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A member's transactional producer.
pub(crate) type TxProducer = Arc<ThreadedProducer<DefaultProducerContext>>;

/// How a member makes its transactional producer: the backend's producer settings plus a
/// `transactional.id` unique to the member.
#[derive(Clone)]
pub(crate) struct TxFactory {
    pub(crate) config: ClientConfig,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for TxFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxFactory")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TxFactory {
    /// A producer with a fresh `transactional.id`, its transactions initialised (blocking).
    pub(crate) fn create(&self, group: &str) -> Result<TxProducer> {
        let mut c = self.config.clone();
        c.set(
            "transactional.id",
            format!("conveyor.tx.{group}.{}", uuid::Uuid::now_v7()),
        );
        // a crashed member's open transaction is aborted by the coordinator only after this
        // long, and until then the next owner's read of the committed offsets waits for it
        // (KIP-447 stable offsets): short, as a transaction here lasts one commit. librdkafka
        // wants message.timeout.ms no longer. A `transaction.timeout.ms` property wins.
        if c.get("transaction.timeout.ms").is_none() {
            let ms = TRANSACTION_TIMEOUT.as_millis().to_string();
            c.set("transaction.timeout.ms", ms.clone());
            let delivery: u128 = c
                .get("message.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u128::MAX);
            if delivery > TRANSACTION_TIMEOUT.as_millis() {
                c.set("message.timeout.ms", ms);
            }
        }
        let p: ThreadedProducer<DefaultProducerContext> = c.create().map_err(crate::broker)?;
        p.init_transactions(self.timeout).map_err(crate::broker)?;
        Ok(Arc::new(p))
    }
}
