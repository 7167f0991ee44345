//! Kafka wire handling: request/response framing and header parsing ([`frame`]), the project's
//! own record-batch codec ([`records`], [`compression`]) and the bounds-checked byte reader they
//! and the descriptor parser share ([`reader`]).

pub mod compression;
pub mod frame;
pub mod names;
pub mod reader;
pub mod records;
