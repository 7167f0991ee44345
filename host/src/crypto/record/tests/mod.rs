//! Unit tests of record encryption: reveal (partial decryption) and schema-aware fields.

mod arena;
mod reveal;
mod schema;
