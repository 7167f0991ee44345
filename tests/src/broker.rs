//! The broker a test runs against: Apache Kafka (the reference for every Kafka behaviour) or
//! tansu (the demo's embedded broker, kept for a fast subset and its own quirks).

use anyhow::Result;

use crate::kafka::KafkaCluster;
use crate::tansu::Tansu;

/// What a test needs of a broker: its address and topics. Implemented by [`Tansu`],
/// [`KafkaCluster`] and [`Broker`], so rig helpers take any of them.
#[allow(async_fn_in_trait)]
pub trait TestBroker {
    /// `host:port` of the broker's plaintext listener (for clients that bypass Kapsule).
    fn bootstrap(&self) -> String;
    /// Creates `name` with `partitions` partitions and waits until it is usable.
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<()>;
}

impl TestBroker for Tansu {
    fn bootstrap(&self) -> String {
        Tansu::bootstrap(self)
    }
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        Tansu::create_topic(self, name, partitions).await
    }
}

impl TestBroker for KafkaCluster {
    fn bootstrap(&self) -> String {
        KafkaCluster::bootstrap(self)
    }
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        KafkaCluster::create_topic(self, name, partitions).await
    }
}

/// A broker for one test: the process's shared Apache Kafka node (isolation by unique topic and
/// group names) or a tansu process of its own (stopped on drop).
pub enum Broker {
    Kafka(&'static KafkaCluster),
    Tansu(Tansu),
}

impl Broker {
    /// The broker for tests about Kafka behaviour: the shared Apache Kafka node, or tansu when
    /// `KAPSULE_TEST_BROKER=tansu` (to run the same tests against the demo's broker).
    pub async fn start_default() -> Result<Broker> {
        match std::env::var("KAPSULE_TEST_BROKER").as_deref() {
            Ok("tansu") => Broker::tansu().await,
            Ok("kafka") | Err(_) => Broker::kafka().await,
            Ok(other) => anyhow::bail!("KAPSULE_TEST_BROKER={other:?}: use `kafka` or `tansu`"),
        }
    }

    /// The process's shared Apache Kafka node (started on first use).
    pub async fn kafka() -> Result<Broker> {
        Ok(Broker::Kafka(KafkaCluster::shared().await?))
    }

    /// A tansu process of this test's own.
    pub async fn tansu() -> Result<Broker> {
        Ok(Broker::Tansu(Tansu::start().await?))
    }

    /// `host:port` of the broker's plaintext listener (for clients that bypass Kapsule).
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Kafka(k) => k.bootstrap(),
            Broker::Tansu(t) => t.bootstrap(),
        }
    }

    /// Creates `name` with `partitions` partitions and waits until it is usable.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        match self {
            Broker::Kafka(k) => k.create_topic(name, partitions).await,
            Broker::Tansu(t) => t.create_topic(name, partitions).await,
        }
    }

    /// [`Broker::create_topic`] with topic configs (e.g. `max.message.bytes`). tansu takes no
    /// topic configs and enforces none of these limits, so there they are not sent.
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        match self {
            Broker::Kafka(k) => k.create_topic_with(name, partitions, configs).await,
            Broker::Tansu(t) => t.create_topic(name, partitions).await,
        }
    }

    /// The broker's node id (a single node; tansu 0.6 always uses 111).
    pub fn node_id(&self) -> u16 {
        match self {
            Broker::Kafka(k) => k.node_ids()[0] as u16,
            Broker::Tansu(_) => 111,
        }
    }

    /// `"kafka"` or `"tansu"`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Kafka(_) => "kafka",
            Broker::Tansu(_) => "tansu",
        }
    }

    /// The tansu process, for tests that stop or restart their broker.
    ///
    /// # Panics
    /// If this is Apache Kafka (the shared node must outlive every test).
    pub fn tansu_mut(&mut self) -> &mut Tansu {
        match self {
            Broker::Tansu(t) => t,
            Broker::Kafka(_) => {
                panic!("this test needs its own tansu broker, not the shared Kafka")
            }
        }
    }
}

impl TestBroker for Broker {
    fn bootstrap(&self) -> String {
        Broker::bootstrap(self)
    }
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        Broker::create_topic(self, name, partitions).await
    }
}
