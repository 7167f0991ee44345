//! kms (see lib.rs module map).
