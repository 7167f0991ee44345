//! Minimal raw Kafka and HTTP probes used for readiness checks and protocol-level assertions.
//!
//! These speak just enough of the wire protocol (ApiVersions v0, Metadata v1) to prove a port is a
//! working Kafka endpoint and to read what it advertises, with no Kafka client library involved.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    http_request("GET", addr, path, timeout).await
}

/// Minimal HTTP/1.0 POST with an empty body: returns status code and body (admin endpoint).
pub async fn http_post(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    http_request("POST", addr, path, timeout).await
}

/// One HTTP/1.0 request without a body; the response is read to the end (at most
/// `MAX_RESPONSE` bytes).
async fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let body_len = if method == "GET" {
            ""
        } else {
            "Content-Length: 0\r\n"
        };
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{body_len}Connection: close\r\n\r\n"
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
