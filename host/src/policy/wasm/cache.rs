//! On-disk cache of compiled policy components, keyed by the module's content hash.
//!
//! Entries are written only by this process (`<sha256>-<engine>.cwasm`, mode 0600, in a directory
//! created with mode 0700) from components it compiled itself. The engine part of the name is a
//! hash of wasmtime's compatibility fingerprint (version, target, settings), so an upgraded or
//! reconfigured Kapsule never picks up a stale artifact; wasmtime checks the fingerprint again on
//! load. The cache directory must not be writable by anyone else: its files are loaded as native
//! code.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Creates the cache directory (mode 0700 on Unix) if needed.
pub(super) fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("creating policy module cache directory {}", dir.display()))
}

fn entry_path(engine: &Engine, dir: &Path, hash: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    dir.join(format!("{hash}-{:016x}.cwasm", h.finish()))
}

/// Loads the cached artifact for `hash`, or compiles `bytes` and caches the result. A cache
/// entry that fails to load is deleted and recompiled. Failure to write the cache is logged and
/// otherwise ignored (the module still loads).
pub(super) fn compile_cached(
    engine: &Engine,
    dir: &Path,
    hash: &str,
    bytes: &[u8],
) -> anyhow::Result<Component> {
    let path = entry_path(engine, dir, hash);
    if path.is_file() {
        match load_entry(engine, &path) {
            Ok(c) => {
                tracing::debug!(entry = %path.display(), "policy module loaded from compile cache");
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(entry = %path.display(), error = %e, "discarding unusable compile cache entry");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let component = Component::new(engine, bytes)
        .map_err(|e| anyhow!("{e:#}"))
        .context("not a valid WebAssembly component (build with --target wasm32-wasip2)")?;
    match component.serialize() {
        Ok(art) => {
            if let Err(e) = write_entry(dir, &path, &art) {
                tracing::warn!(entry = %path.display(), error = %format!("{e:#}"), "cannot write compile cache entry");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialize compiled policy module"),
    }
    Ok(component)
}

#[allow(unsafe_code)]
fn load_entry(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: `deserialize_file` trusts the file to be an artifact produced by
    // `Component::serialize` with a compatible engine. Entries are written only by
    // `write_entry` below, from components this process compiled, into a directory created with
    // mode 0700 (see the module docs for the operator's part of this contract); wasmtime still
    // verifies the header and engine compatibility fingerprint before use.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| anyhow!("{e:#}"))
}

fn write_entry(dir: &Path, path: &Path, art: &[u8]) -> anyhow::Result<()> {
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(art)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
        .with_context(|| format!("renaming {} to {}", tmp.0.display(), path.display()))?;
    Ok(())
}

/// Creates a uniquely named file (mode 0600) in `dir`.
fn tempfile_in(dir: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    for _ in 0..16 {
        let name = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        match opts.open(&name) {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", name.display())),
        }
    }
    anyhow::bail!("cannot create a temporary file in {}", dir.display())
}
