//! policy (see lib.rs module map).
