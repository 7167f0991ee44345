//! Kafka framing: size-prefixed frames, the request/response header fields the proxy needs, and
//! helpers to decode/encode whole messages with kafka-protocol when a stage must change them.
//!
//! The relay path only reads the first 8 bytes of a request (api key, version, correlation id) and
//! the first 4 bytes of a response (correlation id); everything else stays untouched bytes.
//!
//! One submodule per concern: [`io`] reads and writes frames on a socket, [`pool`] recycles their
//! buffers, [`header`] reads the few header fields the relay needs, and [`codec`] decodes and
//! encodes whole messages ([`body`]: bodies written in pieces, record sets not copied).

mod body;
mod codec;
mod header;
mod io;
pub mod pool;

pub use body::{FrameBody, SPLICE_MIN};
pub use codec::{
    decode_fetch_response, decode_request, decode_response, encode_request, encode_request_spliced,
    encode_response, encode_response_spliced,
};
pub use header::{
    produce_acks, produce_header, response_correlation_id, ProduceHeader, RequestMeta,
};
pub use io::{
    put_frame, read_frame, write_frame, FrameError, FrameReader, FrameWriter,
    DEFAULT_MAX_FRAME_BYTES,
};

#[cfg(test)]
mod tests;
