//! crypto (see lib.rs module map).
