//! Integration tests: real clients talk only to Kapsule, which talks to a real tansu broker.

mod kms_vault;
