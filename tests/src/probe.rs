//! Minimal raw Kafka and HTTP probes used for readiness checks and protocol-level assertions.
//!
//! These speak just enough of the wire protocol (ApiVersions v0, Metadata v1) to prove a port is a
//! working Kafka endpoint and to read what it advertises, with no Kafka client library involved.
//! [`RawConnection`] sends arbitrary requests encoded with kafka-protocol, for protocol-level
//! assertions (versions, ordering, timing).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

pub use kafka_protocol;

/// Largest response a probe accepts; anything bigger is treated as a broken peer.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// A broker as advertised in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's node id.
    pub node_id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: i32,
}

/// A topic as listed in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic-level error code (0 = none).
    pub error_code: i16,
    /// Topic name.
    pub name: String,
    /// Number of partitions listed.
    pub partitions: usize,
}

/// Parsed Metadata v1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataInfo {
    /// Advertised brokers.
    pub brokers: Vec<BrokerInfo>,
    /// Topics (all topics: the request asks for every topic).
    pub topics: Vec<TopicInfo>,
}

fn request(api_key: i16, api_version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let client_id = b"kapsule-rig";
    let mut frame = Vec::with_capacity(4 + 10 + client_id.len() + body.len());
    let len = 2 + 2 + 4 + 2 + client_id.len() + body.len();
    frame.extend_from_slice(&(len as i32).to_be_bytes());
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&api_version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    frame.extend_from_slice(client_id);
    frame.extend_from_slice(body);
    frame
}

/// Sends one request frame on a fresh connection and returns the response body after the
/// correlation id (which is checked).
async fn round_trip(
    addr: &str,
    frame: &[u8],
    correlation_id: i32,
    timeout: Duration,
) -> Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream
            .write_all(frame)
            .await
            .context("sending the request")?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .context("reading the response size (peer closed?)")?;
        let len = i32::from_be_bytes(len);
        ensure!(
            (4..=MAX_RESPONSE as i32).contains(&len),
            "response size {len} out of range"
        );
        let mut body = vec![0u8; len as usize];
        stream
            .read_exact(&mut body)
            .await
            .context("reading the response")?;
        let got = i32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        ensure!(
            got == correlation_id,
            "correlation id {got}, expected {correlation_id}"
        );
        Ok(body.split_off(4))
    })
    .await
    .with_context(|| format!("no response from {addr} within {timeout:?}"))?
}

/// Sends ApiVersions v0 to `addr` and checks the response carries error code 0 and at least one API.
/// Returns the number of APIs advertised.
pub async fn api_versions(addr: &str, timeout: Duration) -> Result<usize> {
    let frame = request(18, 0, 7, &[]);
    let body = round_trip(addr, &frame, 7, timeout).await?;
    let mut r = Reader(&body);
    let error = r.i16()?;
    ensure!(error == 0, "ApiVersions error code {error}");
    let n = r.i32()?;
    ensure!(n > 0, "ApiVersions lists no APIs");
    Ok(n as usize)
}

/// Sends Metadata v1 for all topics to `addr` and returns brokers and topics.
pub async fn metadata(addr: &str, timeout: Duration) -> Result<MetadataInfo> {
    let frame = request(3, 1, 9, &(-1i32).to_be_bytes());
    let body = round_trip(addr, &frame, 9, timeout).await?;
    let mut r = Reader(&body);
    let n_brokers = r.len()?;
    let mut brokers = Vec::with_capacity(n_brokers.min(64));
    for _ in 0..n_brokers {
        let node_id = r.i32()?;
        let host = r.string()?;
        let port = r.i32()?;
        let _rack = r.nullable_string()?;
        brokers.push(BrokerInfo {
            node_id,
            host,
            port,
        });
    }
    let _controller = r.i32()?;
    let n_topics = r.len()?;
    let mut topics = Vec::with_capacity(n_topics.min(1024));
    for _ in 0..n_topics {
        let error_code = r.i16()?;
        let name = r.string()?;
        let _internal = r.bytes(1)?;
        let n_parts = r.len()?;
        for _ in 0..n_parts {
            r.bytes(2 + 4 + 4)?;
            let replicas = r.len()?;
            r.bytes(replicas * 4)?;
            let isr = r.len()?;
            r.bytes(isr * 4)?;
        }
        topics.push(TopicInfo {
            error_code,
            name,
            partitions: n_parts,
        });
    }
    Ok(MetadataInfo { brokers, topics })
}

/// A raw Kafka connection for protocol-level tests: requests are encoded with kafka-protocol at
/// exactly the version given (nothing is negotiated), may be pipelined, and responses are read one
/// at a time. Used to send what a well-behaved client never would (versions Kapsule does not
/// advertise, APIs it does not offer) and to observe ordering and timing on one connection.
pub struct RawConnection {
    stream: TcpStream,
    addr: String,
}

impl RawConnection {
    /// Connects to `addr`.
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            addr: addr.to_owned(),
        })
    }

    /// Writes one request of `api` at `version` with `correlation_id` (client id `kapsule-rig`).
    pub async fn send<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        body: &T,
    ) -> Result<()> {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("kapsule-rig")));
        let frame = kapsule::kafka::frame::encode_request(api, &header, body)
            .with_context(|| format!("encoding {api:?} v{version}"))?;
        self.stream
            .write_all(&(frame.len() as i32).to_be_bytes())
            .await?;
        self.stream
            .write_all(&frame)
            .await
            .with_context(|| format!("sending {api:?} v{version} to {}", self.addr))
    }

    /// Reads the next response frame (starting with its correlation id); `None` when the peer
    /// closed the connection instead of answering.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Bytes>> {
        tokio::time::timeout(timeout, async {
            let mut len = [0u8; 4];
            match self.stream.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e).context("reading a response size"),
            }
            let len = i32::from_be_bytes(len);
            ensure!(
                (4..=MAX_RESPONSE as i32).contains(&len),
                "response size {len} out of range"
            );
            let mut body = vec![0u8; len as usize];
            self.stream
                .read_exact(&mut body)
                .await
                .context("reading a response")?;
            Ok(Some(Bytes::from(body)))
        })
        .await
        .with_context(|| format!("no response from {} within {timeout:?}", self.addr))?
    }

    /// Reads the next response and decodes it as `api` at `version`; fails if the peer closed.
    /// Returns (correlation id, body).
    pub async fn recv_as<T: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        timeout: Duration,
    ) -> Result<(i32, T)> {
        let frame = self.recv(timeout).await?.with_context(|| {
            format!(
                "{} closed the connection instead of answering {api:?} v{version}",
                self.addr
            )
        })?;
        let (header, body) = kapsule::kafka::frame::decode_response::<T>(api, version, frame)?;
        Ok((header.correlation_id, body))
    }
}

/// A magic v2 batch (uncompressed, no producer id) holding `records` as (key, value) pairs, all
/// stamped 2023-11-14 (a fixed time keeps the bytes reproducible).
pub fn record_batch(records: &[(&[u8], &[u8])]) -> Bytes {
    record_batch_at(records, 1_700_000_000_000)
}

/// [`record_batch`] stamped `timestamp_ms` (brokers roll segments by record time: `segment.ms`).
pub fn record_batch_at(records: &[(&[u8], &[u8])], timestamp_ms: i64) -> Bytes {
    use kapsule::kafka::records::{Record, RecordBatch};
    let batch = RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0,
        last_offset_delta: records.len().saturating_sub(1) as i32,
        base_timestamp: timestamp_ms,
        max_timestamp: timestamp_ms,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: records
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: i as i32,
                key: Some(Bytes::copy_from_slice(k)),
                value: Some(Bytes::copy_from_slice(v)),
                headers: vec![],
            })
            .collect(),
    };
    batch.to_bytes().expect("encode record batch")
}

/// A Produce request (`acks = -1`) of one batch to partition 0 of `topic`, named by `topic` or,
/// when `topic_id` is given (v13+), by id with an empty name.
pub fn produce_request(
    topic: &str,
    topic_id: Option<Uuid>,
    timeout_ms: i32,
    batch: Bytes,
) -> ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut t =
        TopicProduceData::default().with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(batch))]);
    match topic_id {
        Some(id) => t.topic_id = id,
        None => t.name = TopicName(StrBytes::from_string(topic.to_owned())),
    }
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![t])
}

/// A Fetch request for partition 0 of `topic` from offset 0, by name or (v13+) by id.
pub fn fetch_request(topic: &str, topic_id: Option<Uuid>) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut t = FetchTopic::default().with_partitions(vec![FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(0)
        .with_partition_max_bytes(1024 * 1024)]);
    match topic_id {
        Some(id) => t.topic_id = id,
        None => t.topic = TopicName(StrBytes::from_string(topic.to_owned())),
    }
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_topics(vec![t])
}

/// Topic ids by name, from a Metadata v12 request for all topics sent to `addr`.
pub async fn topic_ids(addr: &str, timeout: Duration) -> Result<Vec<(String, Uuid)>> {
    let mut c = RawConnection::connect(addr).await?;
    // A null topic list asks for every topic (an empty one for none).
    c.send(
        ApiKey::Metadata,
        12,
        1,
        &MetadataRequest::default().with_topics(None),
    )
    .await?;
    let (_, md) = c
        .recv_as::<MetadataResponse>(ApiKey::Metadata, 12, timeout)
        .await?;
    Ok(md
        .topics
        .into_iter()
        .filter_map(|t| Some((t.name?.0.to_string(), t.topic_id)))
        .collect())
}

/// The log end offset of partition 0 of `topic` at `addr` (ListOffsets v1, latest): the number
/// of records the partition ever stored, when it started at 0.
pub async fn end_offset(addr: &str, topic: &str, timeout: Duration) -> Result<i64> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut c = RawConnection::connect(addr).await?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    c.send(ApiKey::ListOffsets, 1, 1, &req).await?;
    let (_, resp) = c
        .recv_as::<ListOffsetsResponse>(ApiKey::ListOffsets, 1, timeout)
        .await?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("ListOffsets answer without a partition")?;
    ensure!(
        p.error_code == 0,
        "ListOffsets for {topic} failed with error code {}",
        p.error_code
    );
    Ok(p.offset)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            bail!(
                "response truncated: wanted {n} bytes, {} left",
                self.0.len()
            );
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.i32()?;
        ensure!(
            (0..=1_000_000).contains(&n),
            "array length {n} out of range"
        );
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        self.nullable_string()?.context("unexpected null string")
    }
    fn nullable_string(&mut self) -> Result<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.bytes(n as usize)?;
        Ok(Some(String::from_utf8_lossy(b).into_owned()))
    }
}

/// Minimal HTTP/1.0 GET: returns status code and body. Used for Kapsule's admin endpoints.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    http_request("GET", addr, path, "", timeout).await
}

/// Minimal HTTP/1.0 POST with an empty body: returns status code and body (admin endpoint).
pub async fn http_post(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    http_request("POST", addr, path, "", timeout).await
}

/// Minimal HTTP/1.0 POST of a JSON body: returns status code and body.
pub async fn http_post_json(
    addr: &str,
    path: &str,
    json: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    http_request("POST", addr, path, json, timeout).await
}

/// One HTTP/1.0 request with `body` (JSON when not empty); the response is read to the end (at
/// most `MAX_RESPONSE` bytes).
async fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let body_headers = match (method, body.is_empty()) {
            ("GET", true) => String::new(),
            (_, true) => "Content-Length: 0\r\n".to_owned(),
            (_, false) => format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
        };
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{body_headers}Connection: close\r\n\r\n{body}"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await
            .context("reading the HTTP response")?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed HTTP status line from {addr}{path}: {head:?}"))?;
        Ok((status, body.to_owned()))
    })
    .await
    .with_context(|| format!("{method} http://{addr}{path} took longer than {timeout:?}"))?
}

/// (error code, message) of every partition of a Produce response.
pub fn partition_errors(resp: &ProduceResponse) -> Vec<(i16, String)> {
    resp.responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .map(|p| {
            (
                p.error_code,
                p.error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The error code and record values of the first partition of a Fetch response.
pub fn fetched_values(resp: &FetchResponse) -> (i16, Vec<Vec<u8>>) {
    use kafka_protocol::records::RecordBatchDecoder;
    let p = &resp.responses[0].partitions[0];
    let mut values = Vec::new();
    if let Some(records) = &p.records {
        let mut buf = records.clone();
        for r in RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched records") {
            values.extend(
                r.records
                    .into_iter()
                    .map(|r| r.value.unwrap_or_default().to_vec()),
            );
        }
    }
    (p.error_code, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves one connection: reads one request frame, answers `body` with the request's
    /// correlation id.
    async fn serve_once(body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut req = vec![0u8; i32::from_be_bytes(len) as usize];
            s.read_exact(&mut req).await.unwrap();
            let mut resp = Vec::new();
            resp.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
            resp.extend_from_slice(&req[4..8]);
            resp.extend_from_slice(&body);
            s.write_all(&resp).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn parses_metadata_v1() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes()); // brokers
        b.extend_from_slice(&111i32.to_be_bytes());
        b.extend_from_slice(&9i16.to_be_bytes());
        b.extend_from_slice(b"127.0.0.1");
        b.extend_from_slice(&9092i32.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes()); // rack
        b.extend_from_slice(&111i32.to_be_bytes()); // controller
        b.extend_from_slice(&1i32.to_be_bytes()); // topics
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(b"t");
        b.push(0);
        b.extend_from_slice(&2i32.to_be_bytes()); // partitions
        for p in 0..2i32 {
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&111i32.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes());
            b.extend_from_slice(&111i32.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes());
            b.extend_from_slice(&111i32.to_be_bytes());
        }
        let addr = serve_once(b).await;
        let md = metadata(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            md.brokers,
            vec![BrokerInfo {
                node_id: 111,
                host: "127.0.0.1".into(),
                port: 9092
            }]
        );
        assert_eq!(
            md.topics,
            vec![TopicInfo {
                error_code: 0,
                name: "t".into(),
                partitions: 2
            }]
        );
    }

    #[tokio::test]
    async fn truncated_and_failing_responses_are_errors() {
        // ApiVersions with error code 35 (unsupported version).
        let addr = serve_once(35i16.to_be_bytes().to_vec()).await;
        let e = api_versions(&addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("35"), "{e:#}");
        // Metadata cut off inside the broker list.
        let addr = serve_once(5i32.to_be_bytes().to_vec()).await;
        let e = metadata(&addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
    }
}
