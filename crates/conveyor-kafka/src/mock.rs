//! [`MockBroker`]: librdkafka's in-process mock cluster, a real Kafka-protocol peer for tests and
//! fault injection, owned by its own thread so a `Send + Sync` handle can create topics and inject
//! faults from any task.
//!
//! What the mock does not implement (CreateTopics, DescribeConfigs, ListGroups, timestamp lookups)
//! and where it differs from Kafka (aborted transactions are visible) is listed in
//! DEVELOPERS.md, "The Kafka-protocol peers".

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use conveyor_core::{Error, Result, TopicSpec};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::sync::oneshot;

use crate::admin::{TopicAdmin, TopicConfigs};

/// A fault to inject.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The next requests of `api` fail with these errors, in order.
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    /// Stop failing requests of `api`.
    ClearRequestErrors(RDKafkaApiKey),
    /// Broker `id` goes down.
    BrokerDown(i32),
    /// Broker `id` comes back.
    BrokerUp(i32),
    /// Broker `id` answers after `delay`.
    RoundTripTime(i32, Duration),
}

enum Command {
    CreateTopic(String, i32, oneshot::Sender<Result<()>>),
    Fault(Fault, oneshot::Sender<Result<()>>),
}

/// A running mock cluster. Dropping it stops the cluster.
#[derive(Debug)]
pub struct MockBroker {
    bootstrap: String,
    commands: Mutex<mpsc::Sender<Command>>,
}

impl MockBroker {
    /// Starts a mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self> {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel::<Command>();
        std::thread::Builder::new()
            .name("conveyor-mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = boot_tx.send(Err(crate::broker(e)));
                        return;
                    }
                };
                let _ = boot_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic(name, partitions, reply) => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&name, partitions, 1)
                                    .map_err(crate::broker),
                            );
                        }
                        Command::Fault(f, reply) => {
                            let r = match f {
                                Fault::RequestErrors(api, errs) => {
                                    cluster.request_errors(api, &errs);
                                    Ok(())
                                }
                                Fault::ClearRequestErrors(api) => {
                                    cluster.clear_request_errors(api);
                                    Ok(())
                                }
                                Fault::BrokerDown(id) => cluster.broker_down(id),
                                Fault::BrokerUp(id) => cluster.broker_up(id),
                                Fault::RoundTripTime(id, d) => {
                                    cluster.broker_round_trip_time(id, d)
                                }
                            };
                            let _ = reply.send(r.map_err(crate::broker));
                        }
                    }
                }
            })?;
        let bootstrap = boot_rx
            .recv()
            .map_err(|_| Error::Broker("mock cluster thread died".into()))??;
        Ok(MockBroker {
            bootstrap,
            commands: Mutex::new(tx),
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    async fn call(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .lock()
            .expect("mock commands lock")
            .send(make(tx))
            .map_err(|_| Error::Broker("mock cluster stopped".into()))?;
        rx.await
            .map_err(|_| Error::Broker("mock cluster stopped".into()))?
    }

    /// Injects a fault.
    pub async fn inject(&self, fault: Fault) -> Result<()> {
        self.call(|tx| Command::Fault(fault, tx)).await
    }
}

#[async_trait]
impl TopicAdmin for MockBroker {
    async fn create(&self, spec: &TopicSpec) -> Result<()> {
        let (name, partitions) = (spec.name.clone(), spec.partitions);
        self.call(|tx| Command::CreateTopic(name, partitions, tx))
            .await
    }

    async fn configs(&self, _topic: &str) -> Result<TopicConfigs> {
        Err(unsupported("reading topic configuration (DescribeConfigs)"))
    }

    async fn alter(&self, _topic: &str, _entries: &[(&'static str, String)]) -> Result<()> {
        Err(unsupported("changing topic configuration (AlterConfigs)"))
    }

    async fn add_partitions(&self, _topic: &str, _total: i32) -> Result<()> {
        Err(unsupported("adding partitions (CreatePartitions)"))
    }
}

fn unsupported(what: &str) -> Error {
    Error::Unsupported {
        backend: "the librdkafka mock cluster".into(),
        what: format!("{what}; test it against a real broker (scripts/kafka.sh)"),
    }
}
