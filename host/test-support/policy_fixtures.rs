//! Builds the policies in `policies/` from source, for tests and benchmarks.
//!
//! No `.wasm` is checked in: [`build_policies`] runs
//! `cargo build --release --target wasm32-wasip2` in the `policies/` workspace once per process
//! (cargo's own lock serializes concurrent test binaries) and returns where the components are.
//! [`build_c_policy`] does the same for the C policy through `policies/header-gate/c/build.sh`.
//!
//! Not part of the `kapsule` library: the unit tests, the benches and the integration tests
//! include this file with `#[path]`, so the shipped binary never runs cargo.

#![allow(dead_code)] // each user (unit tests, benches, integration tests) needs a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context as _;

/// Where the built policy components are.
#[derive(Debug, Clone)]
pub struct PolicyArtifacts {
    dir: PathBuf,
}

impl PolicyArtifacts {
    /// Path of the component built from crate `name` (e.g. `tenant-keys`, `hostile-misbehave`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.wasm", name.replace('-', "_")))
    }
}

/// The repository root (parent of the `host` crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host crate lives inside the repository")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds every Rust policy once per process and returns their location. Fails with cargo's
/// output when the build fails (for example when the `wasm32-wasip2` target is missing:
/// `rustup target add wasm32-wasip2`).
pub fn build_policies() -> anyhow::Result<PolicyArtifacts> {
    static BUILT: OnceLock<Result<PolicyArtifacts, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_policies_uncached().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_policies_uncached() -> anyhow::Result<PolicyArtifacts> {
    let root = repo_root().join("policies");
    let out = Command::new(cargo())
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .with_context(|| format!("running cargo build in {}", root.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "building the policies in {} failed:\n{}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PolicyArtifacts {
        dir: root.join("target/wasm32-wasip2/release"),
    })
}

/// Builds the C policy (`policies/header-gate/c/`) with its `build.sh` once per process and returns
/// the component's path. Fails, saying which tool is missing, when clang, wasi-libc or
/// `wit-bindgen` are not installed (`scripts/install-policy-toolchains.sh` installs them).
pub fn build_c_policy() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            (|| -> anyhow::Result<PathBuf> {
                let dir = repo_root().join("policies/header-gate/c");
                let out = Command::new("bash")
                    .arg(dir.join("build.sh"))
                    .current_dir(&dir)
                    .output()
                    .context("running policies/header-gate/c/build.sh")?;
                if !out.status.success() {
                    anyhow::bail!(
                        "building the C policy failed:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(dir.join("target/header_gate.wasm"))
            })()
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
