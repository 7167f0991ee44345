//! admin (see lib.rs module map).
