//! proxy (see lib.rs module map).
