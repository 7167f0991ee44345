//! Test rig: starts real services (tansu, OpenBao, Kapsule) on free ports and stops them.

pub mod openbao;
