//! PROXY protocol v2 (the binary header a TCP load balancer such as haproxy `send-proxy-v2` or
//! an AWS NLB puts before the client's bytes), so logs and metrics show the real client address.
//!
//! With `proxy.proxy_protocol: v2` every connection on every listener must start with a valid
//! header; one without is closed (a client that bypasses the load balancer could otherwise claim
//! any address). The header is read byte-exactly before TLS, so nothing after it is consumed.
//! A `LOCAL` header (load balancer health checks) keeps the socket's own address. TLVs are skipped.
//!
//! Only peers in `proxy.proxy_protocol_from` (CIDR blocks, default loopback only: `127.0.0.0/8`
//! and `::1/128`) may send a header: a connection from any other socket address is closed before
//! a byte of it is read, so a client that reaches Kapsule directly cannot claim an address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Whether listeners expect a PROXY protocol header (`proxy.proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Clients connect directly (default).
    #[default]
    None,
    /// Every connection starts with a PROXY protocol v2 header.
    V2,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or
/// /128), as written in `proxy.proxy_protocol_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address. The address must be the network's first address
    /// (`10.1.2.3/8` is refused: it usually means a typo).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block (e.g. 10.0.0.0/8)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "`{s}`: host bits are set; write the network address ({}/{prefix})",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (a v4 peer on a `[::]`
    /// listener) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The peers trusted to send a PROXY header when `proxy.proxy_protocol_from` is empty.
pub fn default_trusted_peers() -> Vec<Cidr> {
    vec![
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            network: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

/// Whether the socket peer `peer` may send a PROXY header: it is in `trusted`, or `trusted` is
/// empty and `peer` is a loopback address ([`default_trusted_peers`]).
pub fn is_trusted_peer(trusted: &[Cidr], peer: IpAddr) -> bool {
    if trusted.is_empty() {
        return default_trusted_peers().iter().any(|c| c.contains(peer));
    }
    trusted.iter().any(|c| c.contains(peer))
}

/// Time the load balancer has to send the whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection did not start with the v2 signature (a direct client, or a v1 text header).
    #[error("the connection does not start with the PROXY v2 signature{0}")]
    NoSignature(&'static str),
    /// Version nibble other than 2.
    #[error("unsupported PROXY protocol version {0}")]
    Version(u8),
    /// Command other than LOCAL (0) or PROXY (1).
    #[error("unknown PROXY command {0}")]
    Command(u8),
    /// The address block is shorter than its family needs.
    #[error("address block of {len} bytes is too short for family {family:#x}")]
    Short {
        /// Address family and protocol byte.
        family: u8,
        /// Length announced.
        len: usize,
    },
    /// The connection ended or failed inside the header.
    #[error("connection ended inside the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one v2 header from `r`. `Ok(Some(addr))`: the client's address from a PROXY command
/// over TCP/IPv4 or IPv6. `Ok(None)`: a LOCAL command or a family without an IP address (keep the
/// socket's peer address).
pub async fn read_v2<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<SocketAddr>, HeaderError> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        let hint = if head.starts_with(b"PROXY ") {
            " (got a v1 text header: configure the load balancer for v2, e.g. haproxy `send-proxy-v2`)"
        } else {
            ""
        };
        return Err(HeaderError::NoSignature(hint));
    }
    let version = head[12] >> 4;
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    let command = head[12] & 0x0f;
    if command > 1 {
        return Err(HeaderError::Command(command));
    }
    let family = head[13];
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    // At most 64 KiB, bounded by the u16 length field.
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if command == 0 {
        return Ok(None);
    }
    parse_addresses(family, &body)
}

fn parse_addresses(family: u8, body: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let short = || HeaderError::Short {
        family,
        len: body.len(),
    };
    match family {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            let b = body.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6.
        0x21 => {
            let b = body.get(..36).ok_or_else(short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC, UDP, unix sockets: no usable client address.
        _ => Ok(None),
    }
}

/// Encodes a v2 PROXY header for TCP from `src` to `dst` (used by tests and tools).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
        let mut r = bytes;
        read_v2(&mut r).await
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_headers_give_the_client_address_and_consume_only_the_header() {
        let src: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:9192".parse().unwrap();
        let mut bytes = encode_v2(src, dst);
        bytes.extend_from_slice(b"\0\0\0\x10kafka");
        let mut r = bytes.as_slice();
        assert_eq!(read_v2(&mut r).await.unwrap(), Some(src));
        assert_eq!(r, b"\0\0\0\x10kafka");

        let src6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8::2]:9192".parse().unwrap();
        assert_eq!(read(&encode_v2(src6, dst6)).await.unwrap(), Some(src6));
    }

    #[tokio::test]
    async fn tlvs_are_skipped_and_local_keeps_the_socket_address() {
        let src: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let mut h = encode_v2(src, "192.0.2.2:9".parse().unwrap());
        // Append a 4-byte TLV and fix the length.
        h.extend_from_slice(&[0x04, 0x00, 0x01, 0xaa]);
        h[14..16].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(read(&h).await.unwrap(), Some(src));

        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(read(&local).await.unwrap(), None);
    }

    #[test]
    fn trusted_peers_are_matched_by_cidr_and_default_to_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lb = vec![
            Cidr::parse("10.1.0.0/16").unwrap(),
            Cidr::parse("2001:db8::/32").unwrap(),
            Cidr::parse("192.0.2.7").unwrap(),
        ];
        assert!(is_trusted_peer(&lb, ip("10.1.200.3")));
        assert!(
            is_trusted_peer(&lb, ip("::ffff:10.1.0.1")),
            "v4-mapped peer"
        );
        assert!(is_trusted_peer(&lb, ip("2001:db8:ffff::1")));
        assert!(is_trusted_peer(&lb, ip("192.0.2.7")));
        assert!(!is_trusted_peer(&lb, ip("10.2.0.1")));
        assert!(!is_trusted_peer(&lb, ip("192.0.2.8")));
        assert!(
            !is_trusted_peer(&lb, ip("127.0.0.1")),
            "a list replaces the default"
        );
        // Empty list: loopback only.
        assert!(is_trusted_peer(&[], ip("127.0.0.1")));
        assert!(is_trusted_peer(&[], ip("127.9.9.9")));
        assert!(is_trusted_peer(&[], ip("::1")));
        assert!(!is_trusted_peer(&[], ip("10.0.0.1")));
        assert!(!is_trusted_peer(&[], ip("::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.1.2.3/8", "10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn proxy_protocol_from_is_validated_at_start_up() {
        let base = "proxy:\n  listen: 127.0.0.1:9192\n  upstream: a:1\n";
        let c = crate::config::Config::parse(&format!(
            "{base}  proxy_protocol: v2\n  proxy_protocol_from: [10.0.8.0/24, \"2001:db8::/32\"]\n"
        ))
        .unwrap();
        assert_eq!(c.proxy.proxy_protocol_from.len(), 2);
        let err = crate::config::Config::parse(&format!(
            "{base}  proxy_protocol: v2\n  proxy_protocol_from: [10.0.8.1/24]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("proxy_protocol_from") && err.contains("10.0.8.0/24"),
            "{err}"
        );
        let err =
            crate::config::Config::parse(&format!("{base}  proxy_protocol_from: [10.0.8.0/24]\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("proxy.proxy_protocol is none"), "{err}");
    }

    #[tokio::test]
    async fn direct_clients_v1_headers_and_garbage_are_refused() {
        // A Kafka request straight from a client.
        let kafka = [0u8, 0, 0, 20, 0, 18, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            read(&kafka).await,
            Err(HeaderError::NoSignature(""))
        ));
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        let e = read(v1).await.unwrap_err().to_string();
        assert!(e.contains("send-proxy-v2"), "{e}");
        let mut bad_version = SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(matches!(
            read(&bad_version).await,
            Err(HeaderError::Version(1))
        ));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(read(&short).await, Err(HeaderError::Short { .. })));
        // Announced length longer than what arrives.
        let mut truncated = SIGNATURE.to_vec();
        truncated.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2]);
        assert!(matches!(read(&truncated).await, Err(HeaderError::Io(_))));
    }
}
