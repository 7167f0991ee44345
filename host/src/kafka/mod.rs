//! Kafka wire handling: request/response framing and header parsing ([`frame`]) and the project's
//! own record-batch codec ([`records`], [`compression`]).

pub mod compression;
pub mod frame;
pub mod names;
pub mod records;
