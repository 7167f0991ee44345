//! Unit tests of record encryption: reveal (partial decryption) and schema-aware fields.

mod reveal;
mod schema;
