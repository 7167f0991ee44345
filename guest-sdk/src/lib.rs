//! Guest SDK for Kapsule policies (placeholder until the Wasm policy issue lands).
#![deny(missing_docs)]
