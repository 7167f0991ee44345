//! Kafka wire handling: request/response framing and header parsing ([`frame`]), the project's
//! own record-batch codec ([`records`], [`compression`]) and the bounds-checked byte reader they
//! and the descriptor parser share ([`reader`]).

pub mod compression;
pub mod frame;
pub mod names;
pub mod reader;
pub mod records;

/// Splits `host:port` (IPv6 in brackets allowed). `None` when malformed.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}
