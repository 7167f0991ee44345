//! crypto (see lib.rs module map).
pub mod metrics;
pub mod primitives;
