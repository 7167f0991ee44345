//! The compile-worker protocol: how the proxy re-executes itself to compile one module out of
//! process (see [`crate::policy::PolicyRegistry::compile_worker_main`] for why).
//!
//! The parent ([`super::cache::CompileCache`]) starts the same executable with the first argument
//! [`COMPILE_WORKER_ARG`], the cache directory in [`WORKER_DIR_ENV`], the engine's Wasm stack
//! limit in [`WORKER_STACK_ENV`] and the component on stdin. The worker compiles it with those
//! engine settings, writes the authenticated cache entry and exits 0; the parent then loads the
//! entry as it would a cached one, and compiles in-process if anything went wrong.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::policy::config::LimitsConfig;

/// First argument that makes the Kapsule executable run as a compile worker (not for users).
pub const COMPILE_WORKER_ARG: &str = "__kapsule-compile-policy-module";
/// Environment of a compile worker: the cache directory to write into.
pub(in crate::policy) const WORKER_DIR_ENV: &str = "KAPSULE_COMPILE_WORKER_DIR";
/// Environment of a compile worker: the engine's Wasm stack limit in KiB (part of the engine's
/// settings, so of the entry's name).
pub(in crate::policy) const WORKER_STACK_ENV: &str = "KAPSULE_COMPILE_WORKER_STACK_KIB";

/// Set once the executable has called
/// [`PolicyRegistry::compile_worker_main`](crate::policy::PolicyRegistry::compile_worker_main): it can then be
/// re-executed as a compile worker.
static WORKER_CAPABLE: AtomicBool = AtomicBool::new(false);

/// Whether cold compiles should go to a worker process: the executable answers
/// [`COMPILE_WORKER_ARG`] and `KAPSULE_POLICY_COMPILE_IN_PROCESS` is not `1`.
pub(in crate::policy) fn compile_worker_available() -> bool {
    WORKER_CAPABLE.load(Ordering::Relaxed)
        && std::env::var_os("KAPSULE_POLICY_COMPILE_IN_PROCESS").is_none_or(|v| v != "1")
}

/// The compile worker's body: reads a component from stdin, compiles it with the engine
/// settings given in the environment ([`WORKER_DIR_ENV`], [`WORKER_STACK_ENV`]) and leaves the
/// authenticated entry in that cache directory. The worker itself always compiles in-process.
pub(in crate::policy) fn run_compile_worker() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::var_os(WORKER_DIR_ENV).context("compile worker: no cache directory given")?,
    );
    let stack_kib: u64 = std::env::var(WORKER_STACK_ENV)
        .context("compile worker: no stack size given")?
        .parse()
        .context("compile worker: stack size is not a number")?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("compile worker: reading the module from stdin")?;
    let limits = super::Limits::from(&LimitsConfig {
        stack_kib,
        ..LimitsConfig::default()
    });
    let rt = super::WasmRuntime::new(&dir, limits)?;
    rt.compile_traced(&bytes)?;
    Ok(())
}

/// Marks this executable as able to act as a compile worker (it answers [`COMPILE_WORKER_ARG`]).
pub(in crate::policy) fn mark_capable() {
    WORKER_CAPABLE.store(true, Ordering::Relaxed);
}
