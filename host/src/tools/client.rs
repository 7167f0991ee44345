//! A minimal Kafka client for the operator tools: bootstrap, ApiVersions, Metadata, ListOffsets,
//! Fetch (up to v12, by topic name) and Produce (up to v9, `acks = -1`), one request in flight
//! per connection; each API at the highest version both sides support.
//!
//! Requests go to the partition leader named by Metadata; connections are opened lazily per
//! broker and reused. Against a single-node broker (or a Kapsule in front of one) everything runs
//! over the bootstrap connection's peer.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use bytes::Bytes;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsResponse;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::kafka::frame::{decode_response, encode_request, read_frame, write_frame};
use crate::kafka::records::{split_record_set, RecordBatch, RecordSetEntry};

/// ApiVersions request version (every Kafka 2.4+ broker answers it).
const API_VERSIONS_V: i16 = 3;
/// Version ranges this client can speak: the highest version the broker also supports is used.
/// Fetch stops at 11: v12+ responses are flexible, and tansu 0.6 sends a tagged field (tag 0)
/// in Fetch v12 responses that kafka-protocol refuses; v11 has no tagged fields and still
/// addresses topics by name. Produce stops at 9.
const RANGES: [(ApiKey, i16, i16); 4] = [
    (ApiKey::Metadata, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::Produce, 3, 9),
];

/// Largest response frame accepted (matches Kafka's default `socket.request.max.bytes`).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;
/// Client id sent with every request.
const CLIENT_ID: &str = "kapsule-tools";

/// One partition of a topic, as the tools address it; shown as `topic/partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPartition<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition id.
    pub partition: i32,
}

impl<'a> TopicPartition<'a> {
    /// Partition `partition` of `topic`.
    pub fn new(topic: &'a str, partition: i32) -> Self {
        Self { topic, partition }
    }
}

impl std::fmt::Display for TopicPartition<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What the tools need from a Kafka cluster. [`KafkaClient`] implements it over TCP; unit tests
/// use in-process fakes.
#[async_trait]
pub trait Cluster: Send {
    /// Partition ids of `topic`, ascending. Errors if the topic does not exist.
    async fn partitions(&mut self, topic: &str) -> anyhow::Result<Vec<i32>>;
    /// `(earliest, latest)` offsets of a partition; `latest` is the high watermark (the offset
    /// the next record will get).
    async fn offsets(&mut self, tp: TopicPartition<'_>) -> anyhow::Result<(i64, i64)>;
    /// Fetches complete v2 batches starting at or before `offset` (a batch may begin earlier;
    /// callers skip records below `offset`). An empty result means nothing is available yet.
    async fn fetch(
        &mut self,
        tp: TopicPartition<'_>,
        offset: i64,
        max_bytes: i32,
    ) -> anyhow::Result<Vec<RecordBatch>>;
    /// Produces one batch with `acks = -1`; returns the base offset the broker assigned.
    async fn produce(&mut self, tp: TopicPartition<'_>, batch: &RecordBatch)
        -> anyhow::Result<i64>;
}

/// One broker connection: a framed TCP stream and the next correlation id.
struct Conn {
    addr: String,
    stream: BufReader<TcpStream>,
    next_correlation: i32,
    /// Negotiated version per API key.
    versions: HashMap<i16, i16>,
}

impl Conn {
    async fn open(addr: &str, timeout: Duration) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            addr: addr.to_owned(),
            stream: BufReader::new(stream),
            next_correlation: 1,
            versions: HashMap::new(),
        };
        conn.check_versions(timeout).await?;
        Ok(conn)
    }

    /// Sends `body` at the negotiated version of `api` and decodes the answer.
    async fn request<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        body: &Req,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        let version = *self
            .versions
            .get(&(api as i16))
            .ok_or_else(|| anyhow!("no negotiated version for {api:?}"))?;
        self.call(api, version, body, timeout).await
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let frame = encode_request(api, &header, body)?;
        let addr = self.addr.clone();
        let exchange = async {
            write_frame(self.stream.get_mut(), &frame).await?;
            self.stream.get_mut().flush().await?;
            let resp = read_frame(&mut self.stream, MAX_RESPONSE_BYTES)
                .await?
                .ok_or_else(|| anyhow!("{addr} closed the connection before answering {api:?}"))?;
            anyhow::Ok(resp)
        };
        let resp = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow!("{api:?} to {addr} got no answer within {timeout:?}"))?
            .with_context(|| format!("{api:?} request to {addr}"))?;
        let (h, body) = decode_response::<Resp>(api, version, resp)?;
        if h.correlation_id != correlation {
            bail!(
                "{addr} answered correlation id {} to request {correlation}: protocol error",
                h.correlation_id
            );
        }
        Ok(body)
    }

    async fn check_versions(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp: ApiVersionsResponse = self
            .call(ApiKey::ApiVersions, API_VERSIONS_V, &req, timeout)
            .await?;
        if let Some(e) = resp.error_code.err() {
            bail!("{} refused ApiVersions v{API_VERSIONS_V}: {e}", self.addr);
        }
        for (api, lo, hi) in RANGES {
            let Some(k) = resp.api_keys.iter().find(|k| k.api_key == api as i16) else {
                bail!(
                    "{} does not offer {api:?}, which kapsule tools need",
                    self.addr
                );
            };
            let v = hi.min(k.max_version);
            if v < lo || v < k.min_version {
                bail!(
                    "{} supports {api:?} v{}..=v{}, kapsule tools need a version in v{lo}..=v{hi}",
                    self.addr,
                    k.min_version,
                    k.max_version
                );
            }
            self.versions.insert(api as i16, v);
        }
        Ok(())
    }
}

/// Partition → leader id and broker id → address, from one Metadata response.
#[derive(Debug, Default)]
struct TopicMeta {
    partitions: Vec<i32>,
    leaders: HashMap<i32, i32>,
}

/// Kafka client over plain TCP (no TLS/SASL: point it at Kapsule's or the broker's plaintext
/// listener).
pub struct KafkaClient {
    bootstrap: String,
    timeout: Duration,
    conns: HashMap<String, Conn>,
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicMeta>,
}

impl KafkaClient {
    /// Connects to `bootstrap` (HOST:PORT) and checks the API versions. `timeout` bounds each
    /// connect and each request.
    pub async fn connect(bootstrap: &str, timeout: Duration) -> anyhow::Result<Self> {
        let conn = Conn::open(bootstrap, timeout).await?;
        let mut conns = HashMap::new();
        conns.insert(bootstrap.to_owned(), conn);
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            timeout,
            conns,
            brokers: HashMap::new(),
            topics: HashMap::new(),
        })
    }

    async fn conn(&mut self, addr: &str) -> anyhow::Result<&mut Conn> {
        if !self.conns.contains_key(addr) {
            let c = Conn::open(addr, self.timeout).await?;
            self.conns.insert(addr.to_owned(), c);
        }
        Ok(self.conns.get_mut(addr).expect("inserted above"))
    }

    async fn metadata(&mut self, topic: &str) -> anyhow::Result<&TopicMeta> {
        if !self.topics.contains_key(topic) {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                    TopicName(StrBytes::from_string(topic.to_owned())),
                ))]))
                .with_allow_auto_topic_creation(false);
            let timeout = self.timeout;
            let bootstrap = self.bootstrap.clone();
            let resp: MetadataResponse = self
                .conn(&bootstrap)
                .await?
                .request(ApiKey::Metadata, &req, timeout)
                .await?;
            for b in &resp.brokers {
                self.brokers
                    .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
            }
            let t = resp
                .topics
                .iter()
                .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
                .ok_or_else(|| {
                    anyhow!("metadata for topic {topic:?} is missing from the answer")
                })?;
            if let Some(e) = t.error_code.err() {
                bail!("topic {topic:?}: {e} (does it exist? the tools never create topics)");
            }
            let mut meta = TopicMeta::default();
            for p in &t.partitions {
                meta.partitions.push(p.partition_index);
                meta.leaders.insert(p.partition_index, p.leader_id.0);
            }
            meta.partitions.sort_unstable();
            self.topics.insert(topic.to_owned(), meta);
        }
        Ok(&self.topics[topic])
    }

    /// Connection to the leader of a partition (the bootstrap when the leader is unknown).
    async fn leader(&mut self, tp: TopicPartition<'_>) -> anyhow::Result<&mut Conn> {
        let leader = self
            .metadata(tp.topic)
            .await?
            .leaders
            .get(&tp.partition)
            .copied();
        let addr = match leader.and_then(|id| self.brokers.get(&id)) {
            Some(a) => a.clone(),
            None => self.bootstrap.clone(),
        };
        self.conn(&addr).await
    }

    /// Sends `req` to the leader of `tp` and decodes the answer.
    async fn leader_request<Req: Encodable, Resp: Decodable>(
        &mut self,
        tp: TopicPartition<'_>,
        api: ApiKey,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        let timeout = self.timeout;
        self.leader(tp).await?.request(api, req, timeout).await
    }

    async fn list_offset(&mut self, tp: TopicPartition<'_>, ts: i64) -> anyhow::Result<i64> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(tp.topic.to_owned())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(tp.partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(ts)])]);
        let resp: ListOffsetsResponse = self.leader_request(tp, ApiKey::ListOffsets, &req).await?;
        let p = partition_answer(
            resp.topics.iter().flat_map(|t| t.partitions.iter()),
            |p| p.partition_index,
            "ListOffsets",
            tp,
        )?;
        if let Some(e) = p.error_code.err() {
            bail!("ListOffsets {tp}: {e}");
        }
        Ok(p.offset)
    }
}

#[async_trait]
impl Cluster for KafkaClient {
    async fn partitions(&mut self, topic: &str) -> anyhow::Result<Vec<i32>> {
        Ok(self.metadata(topic).await?.partitions.clone())
    }

    async fn offsets(&mut self, tp: TopicPartition<'_>) -> anyhow::Result<(i64, i64)> {
        let earliest = self.list_offset(tp, -2).await?;
        let listed = self.list_offset(tp, -1).await?;
        // Some brokers answer ListOffsets(latest) wrongly: tansu 0.6 reports 1 after a single
        // 23-record batch. The high watermark of a Fetch is what consumers go by, so take the
        // larger of the two; a bounded 1-byte fetch costs one round trip.
        let (high_watermark, _) = self.fetch_partition(tp, earliest, 1).await?;
        Ok((earliest, listed.max(high_watermark)))
    }

    async fn fetch(
        &mut self,
        tp: TopicPartition<'_>,
        offset: i64,
        max_bytes: i32,
    ) -> anyhow::Result<Vec<RecordBatch>> {
        let (_, records) = self.fetch_partition(tp, offset, max_bytes).await?;
        decode_batches(records).with_context(|| format!("decoding records of {tp}@{offset}"))
    }

    async fn produce(
        &mut self,
        tp: TopicPartition<'_>,
        batch: &RecordBatch,
    ) -> anyhow::Result<i64> {
        let records = batch
            .to_bytes()
            .with_context(|| format!("encoding a batch for {tp}"))?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(tp.topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(tp.partition)
                    .with_records(Some(records))])]);
        let resp: ProduceResponse = self.leader_request(tp, ApiKey::Produce, &req).await?;
        let p = partition_answer(
            resp.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter()),
            |p| p.index,
            "Produce",
            tp,
        )?;
        if let Some(e) = p.error_code.err() {
            let msg = p.error_message.as_ref().map(|m| m.as_str()).unwrap_or("");
            bail!("Produce to {tp} failed: {e} {msg}");
        }
        Ok(p.base_offset)
    }
}

impl KafkaClient {
    /// One Fetch of a partition from `offset`: `(high watermark, raw record set)`.
    async fn fetch_partition(
        &mut self,
        tp: TopicPartition<'_>,
        offset: i64,
        max_bytes: i32,
    ) -> anyhow::Result<(i64, Bytes)> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(200)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(tp.topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(tp.partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(max_bytes)])]);
        let resp: FetchResponse = self.leader_request(tp, ApiKey::Fetch, &req).await?;
        if let Some(e) = resp.error_code.err() {
            bail!("Fetch {tp}@{offset}: {e}");
        }
        let p = partition_answer(
            resp.responses.iter().flat_map(|t| t.partitions.iter()),
            |p| p.partition_index,
            "Fetch",
            tp,
        )?;
        if let Some(e) = p.error_code.err() {
            bail!("Fetch {tp}@{offset}: {e}");
        }
        Ok((p.high_watermark, p.records.clone().unwrap_or_default()))
    }
}

/// Cuts a Fetch record set into decoded v2 batches: drops the truncated tail (the broker cuts at
/// `max_bytes`), keeps control batches (callers skip them but advance past their offsets) and
/// refuses legacy v0/v1 messages.
pub fn decode_batches(records: Bytes) -> anyhow::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for entry in split_record_set(&records) {
        match entry? {
            RecordSetEntry::Partial(_) => break,
            RecordSetEntry::Batch(raw) => {
                if raw.is_legacy() {
                    bail!(
                        "legacy (magic {}) message at offset {}: kapsule tools read magic v2 batches only",
                        raw.magic(),
                        raw.base_offset()
                    );
                }
                out.push(raw.decode()?);
            }
        }
    }
    Ok(out)
}

/// The answer for `tp` among a response's partitions (`index` reads a partition's
/// index), or an error naming the API and what its answer lacks.
fn partition_answer<'a, P: 'a>(
    partitions: impl IntoIterator<Item = &'a P>,
    index: impl Fn(&P) -> i32,
    api: &str,
    tp: TopicPartition<'_>,
) -> anyhow::Result<&'a P> {
    partitions
        .into_iter()
        .find(|p| index(p) == tp.partition)
        .ok_or_else(|| anyhow!("{api} answer lacks {tp}"))
}
