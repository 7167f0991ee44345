//! On-disk cache of compiled policy components, keyed by the module's content hash.
//!
//! A cache entry is native code, so nothing found in the cache directory is trusted:
//! - The directory must be owned by the user running Kapsule and not writable by group or
//!   others (the default, under the user's cache directory, is created with mode 0700); any
//!   other directory is refused at start-up with an error saying how to fix it.
//! - Every entry is authenticated: `MAGIC`, then HMAC-SHA256 over the entry's name and
//!   artifact under a per-install secret (`cache.key`, 32 random bytes, mode 0600, in the same
//!   directory), then the artifact. An entry whose tag does not verify (tampered, written by
//!   another install, truncated) is deleted and the module recompiled; it is never
//!   deserialized.
//! - Files are opened with `O_NOFOLLOW`: a symlink planted under an entry's name is removed,
//!   not followed.
//!
//! A module missing from the cache is compiled by a worker process when the executable supports
//! it (see [`crate::policy::PolicyRegistry::compile_worker_main`]): the worker writes the entry
//! with the same secret and exits, and this process loads the entry like any cached one, so the
//! compiler's memory never lands in the proxy. Any worker failure falls back to compiling
//! in-process.
//!
//! Entry names are `<sha256>-<engine>.cwasm`; the engine part hashes wasmtime's compatibility
//! fingerprint (version, target, settings) and Kapsule's version, so an upgraded or reconfigured
//! Kapsule never picks up a stale artifact; wasmtime checks the fingerprint again on load.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use ring::hmac;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::worker::{
    compile_worker_available, COMPILE_WORKER_ARG, WORKER_DIR_ENV, WORKER_STACK_ENV,
};

/// First bytes of every entry (format version 1).
const MAGIC: &[u8; 16] = b"KAPSULE-CWASM-1\n";
/// Length of the HMAC-SHA256 tag after the magic.
const TAG_LEN: usize = 32;
/// Name of the per-install secret in the cache directory.
const KEY_FILE: &str = "cache.key";
/// Largest entry read back (compiled modules are a few times their 1 GiB-capped source at most).
const MAX_ENTRY_BYTES: u64 = 4 << 30;

/// What [`CompileCache::compile`] did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheOutcome {
    /// A verified entry was loaded.
    Hit,
    /// No entry existed; the module was compiled in this process (and cached when possible).
    Compiled,
    /// No entry existed; worker process `pid` compiled the module and wrote the entry, which
    /// was then loaded like a cached one.
    CompiledInWorker {
        /// The worker's process id.
        pid: u32,
    },
    /// An entry existed but was refused (named reason) and the module was recompiled.
    Refused(String),
}

/// The compile cache of one runtime: a checked directory, its secret, and how to start a
/// compile worker (if this executable can act as one).
pub(super) struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    worker: Option<Worker>,
}

/// How to start a compile worker: `program args...`, with the cache directory and the engine's
/// stack limit in the environment and the module on stdin.
#[derive(Debug, Clone)]
struct Worker {
    program: PathBuf,
    args: Vec<OsString>,
    /// The engine's Wasm stack limit in KiB (the worker's engine must match this one).
    stack_kib: u64,
}

/// The default cache directory: `$XDG_CACHE_HOME/kapsule/policy-modules`, else
/// `$HOME/.cache/kapsule/policy-modules`, else `kapsule-policy-cache-<uid>` under the system
/// temporary directory.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match base {
        Some(b) if b.is_absolute() => b.join("kapsule").join("policy-modules"),
        _ => std::env::temp_dir().join(format!("kapsule-policy-cache-{}", current_uid())),
    }
}

/// The effective uid of this process (owner of `/proc/self`).
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

impl CompileCache {
    /// Creates `dir` (mode 0700) if missing, checks that it is a real directory owned by this
    /// user and not writable by group or others, and loads or creates the secret.
    /// `stack_bytes` is the engine's Wasm stack limit, which a compile worker's engine must
    /// share; workers are used only when this executable supports them.
    pub(super) fn open(dir: &Path, stack_bytes: usize) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating policy module cache directory {}", dir.display()))?;
        check_private_dir(dir)?;
        let key = load_or_create_key(dir)?;
        let worker =
            (compile_worker_available() && stack_bytes.is_multiple_of(1024)).then(|| Worker {
                // The running executable, even if its file was replaced since it started.
                program: PathBuf::from("/proc/self/exe"),
                args: vec![COMPILE_WORKER_ARG.into()],
                stack_kib: (stack_bytes / 1024) as u64,
            });
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            worker,
        })
    }

    fn entry_path(&self, engine: &Engine, hash: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        self.dir.join(format!("{hash}-{:016x}.cwasm", h.finish()))
    }

    /// HMAC-SHA256 of `name`, a zero byte and `artifact` under this directory's secret.
    fn tag(&self, name: &str, artifact: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &self.key));
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(artifact);
        ctx.sign()
    }

    /// Loads the verified cached artifact for `hash`, or compiles `bytes` (in a worker process
    /// when available, else here) and caches the result. Failure to write the cache is logged
    /// and otherwise ignored.
    pub(super) fn compile(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(engine, hash);
        let mut outcome = CacheOutcome::Compiled;
        match self.load_entry(engine, &path) {
            Ok(Some(c)) => {
                tracing::debug!(entry = %path.display(), "policy module loaded from compile cache");
                return Ok((c, CacheOutcome::Hit));
            }
            Ok(None) => {}
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::warn!(entry = %path.display(), error = %reason, "refusing compile cache entry; recompiling");
                let _ = std::fs::remove_file(&path);
                outcome = CacheOutcome::Refused(reason);
            }
        }
        if let Some(w) = &self.worker {
            let started = Instant::now();
            match self.compile_in_worker(w, engine, &path, bytes) {
                Ok((component, pid)) => {
                    tracing::info!(
                        worker_pid = pid,
                        ms = started.elapsed().as_millis() as u64,
                        "policy module compiled by a worker process"
                    );
                    if outcome == CacheOutcome::Compiled {
                        outcome = CacheOutcome::CompiledInWorker { pid };
                    }
                    return Ok((component, outcome));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "policy compile worker failed; compiling in this process instead (its memory stays with the proxy)")
                }
            }
        }
        let component = Component::new(engine, bytes)
            .map_err(|e| anyhow!("{e:#}"))
            .context("not a valid WebAssembly component (build with --target wasm32-wasip2)")?;
        match component.serialize() {
            Ok(art) => {
                if let Err(e) = self.write_entry(&path, &art) {
                    tracing::warn!(entry = %path.display(), error = %format!("{e:#}"), "cannot write compile cache entry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize compiled policy module"),
        }
        Ok((component, outcome))
    }

    /// Runs worker `w` on `bytes` and loads the entry it wrote at `path`. Returns the component
    /// and the worker's pid; an error if the worker could not run, failed, or left no entry this
    /// engine accepts.
    fn compile_in_worker(
        &self,
        w: &Worker,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, u32)> {
        let mut child = Command::new(&w.program)
            .args(&w.args)
            .env(WORKER_DIR_ENV, &self.dir)
            .env(WORKER_STACK_ENV, w.stack_kib.to_string())
            // A worker never starts workers of its own.
            .env("KAPSULE_POLICY_COMPILE_IN_PROCESS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", w.program.display()))?;
        let pid = child.id();
        // The worker reads all of stdin before writing anything, so this cannot deadlock on a
        // full stderr pipe. Dropping stdin ends the module.
        let sent = child.stdin.take().map(|mut i| i.write_all(bytes));
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for compile worker {pid}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: String = err.trim().chars().take(2000).collect();
            anyhow::bail!("compile worker {pid} {}: {err}", out.status);
        }
        if let Some(Err(e)) = sent {
            return Err(e).with_context(|| format!("sending the module to compile worker {pid}"));
        }
        match self.load_entry(engine, path)? {
            Some(c) => Ok((c, pid)),
            None => anyhow::bail!(
                "compile worker {pid} left no cache entry {} (its engine settings differ)",
                path.display()
            ),
        }
    }

    /// `Ok(None)` when there is no entry; an error when there is one that must not be used.
    #[allow(unsafe_code)]
    fn load_entry(&self, engine: &Engine, path: &Path) -> anyhow::Result<Option<Component>> {
        let mut f = match open_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("opening (symlinks are not followed)"),
        };
        let meta = f.metadata()?;
        if !meta.is_file() {
            anyhow::bail!("not a regular file");
        }
        if meta.len() > MAX_ENTRY_BYTES {
            anyhow::bail!("{} bytes, larger than any compiled module", meta.len());
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut data)?;
        let body = data
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| anyhow!("not a Kapsule cache entry (bad header)"))?;
        if body.len() < TAG_LEN {
            anyhow::bail!("truncated entry");
        }
        let (tag, artifact) = body.split_at(TAG_LEN);
        let name = file_name(path);
        if !crate::constant_time::eq(tag, self.tag(&name, artifact).as_ref()) {
            anyhow::bail!(
                "authentication tag does not verify (tampered, truncated or written by another \
                 install)"
            );
        }
        // SAFETY: `Component::deserialize` trusts its input to be an artifact produced by
        // `Component::serialize` with a compatible engine. The HMAC above proves this entry was
        // written by `write_entry` of an install holding this directory's secret, from a
        // component it compiled itself; wasmtime still checks the header and engine fingerprint.
        let c =
            unsafe { Component::deserialize(engine, artifact) }.map_err(|e| anyhow!("{e:#}"))?;
        Ok(Some(c))
    }

    fn write_entry(&self, path: &Path, art: &[u8]) -> anyhow::Result<()> {
        let (tmp, mut f) = tempfile_in(&self.dir)?;
        let result = (|| -> anyhow::Result<()> {
            f.write_all(MAGIC)?;
            f.write_all(self.tag(&file_name(path), art).as_ref())?;
            f.write_all(art)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
}

/// `O_NOFOLLOW` on Linux (all architectures Kapsule builds for use the generic value).
const O_NOFOLLOW: i32 = 0o400000;

/// Refuses a directory that is a symlink, not owned by this user, or writable by group/others.
fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("inspecting policy module cache directory {}", dir.display()))?;
    let fix = "set policy.module_cache_dir to a directory only Kapsule's user can write \
               (mkdir -m 700)";
    if meta.file_type().is_symlink() || !meta.is_dir() {
        anyhow::bail!(
            "policy module cache directory {} is not a directory (symlinks are refused); {fix}",
            dir.display()
        );
    }
    let uid = current_uid();
    if meta.uid() != uid {
        anyhow::bail!(
            "policy module cache directory {} is owned by uid {}, not by Kapsule's uid {uid}; \
             its files would be loaded as native code; {fix}",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "policy module cache directory {} is writable by other users (mode {mode:03o}); \
             its files would be loaded as native code; {fix}",
            dir.display()
        );
    }
    Ok(())
}

/// Reads the 32-byte secret (mode 0600, owned by this user), creating it if missing. An
/// unusable secret is replaced, which only invalidates existing entries.
fn load_or_create_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    match read_key(&path) {
        Ok(Some(k)) => return Ok(k),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "replacing unusable compile cache secret; cached modules will be recompiled");
            std::fs::remove_file(&path)
                .with_context(|| format!("removing unusable {}", path.display()))?;
        }
    }
    let key: [u8; 32] = rand::random();
    let (tmp, mut f) = tempfile_in(dir)?;
    f.write_all(&key)?;
    f.sync_all()?;
    // A hard link fails if another process created the secret first; then use theirs.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            read_key(&path)?.ok_or_else(|| anyhow!("{} vanished", path.display()))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e).with_context(|| format!("creating {}", path.display()))
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<Option<[u8; 32]>> {
    let mut f = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("opening (symlinks are not followed)"),
    };
    let meta = f.metadata()?;
    if !meta.is_file() || meta.uid() != current_uid() || meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!("not a regular file of this user with mode 0600");
    }
    let mut key = [0u8; 32];
    let mut rest = Vec::new();
    f.read_exact(&mut key).context("shorter than 32 bytes")?;
    f.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        anyhow::bail!("longer than 32 bytes");
    }
    Ok(Some(key))
}

/// Creates a uniquely named file (mode 0600, `O_EXCL`) in `dir`.
fn tempfile_in(dir: &Path) -> anyhow::Result<(PathBuf, File)> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(O_NOFOLLOW);
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn refuses_directories_writable_by_others_and_symlinks() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CompileCache::open(&open, 512 << 10)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("writable by other users"), "{e}");
        let link = base.path().join("link");
        let private = base.path().join("private");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        std::fs::create_dir(&private).unwrap();
        let e = CompileCache::open(&link, 512 << 10)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        let c = CompileCache::open(&private, 512 << 10).unwrap();
        let mode = std::fs::metadata(private.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same secret is read back by the next start.
        assert_eq!(CompileCache::open(&private, 512 << 10).unwrap().key, c.key);
    }

    /// The smallest valid component (empty): enough to exercise compile, cache and load.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    /// Not a test: the compile worker's body when this test binary is re-executed as one by
    /// [`test_worker`] (a no-op in normal test runs).
    #[test]
    fn compile_worker_entry() {
        if std::env::var_os(WORKER_DIR_ENV).is_none() {
            return;
        }
        let code = match super::super::worker::run_compile_worker() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e:#}");
                1
            }
        };
        std::process::exit(code);
    }

    /// This test binary, re-executed to run only [`compile_worker_entry`].
    fn test_worker(stack_kib: u64) -> Worker {
        Worker {
            program: std::env::current_exe().unwrap(),
            args: [
                "policy::wasm::cache::tests::compile_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ]
            .map(OsString::from)
            .to_vec(),
            stack_kib,
        }
    }

    fn runtime(dir: &Path) -> super::super::WasmRuntime {
        super::super::WasmRuntime::new(dir, super::super::Limits::default()).unwrap()
    }

    #[test]
    fn a_worker_process_compiles_and_this_process_loads_its_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let rt = runtime(&dir);
        let stack = rt.limits().stack_bytes;
        let mut cache = CompileCache::open(&dir, stack).unwrap();
        assert!(
            cache.worker.is_none(),
            "a test binary never set itself up as a worker"
        );
        cache.worker = Some(test_worker((stack / 1024) as u64));
        let hash = hex::encode(Sha256::digest(EMPTY_COMPONENT));
        let (_, outcome) = cache.compile(rt.engine(), &hash, EMPTY_COMPONENT).unwrap();
        match outcome {
            CacheOutcome::CompiledInWorker { pid } => assert_ne!(pid, std::process::id()),
            other => panic!("expected a worker compile, got {other:?}"),
        }
        assert!(cache.entry_path(rt.engine(), &hash).is_file());
        // The worker's entry verifies under this process's secret: the next load is a hit.
        let (_, again) = cache.compile(rt.engine(), &hash, EMPTY_COMPONENT).unwrap();
        assert_eq!(again, CacheOutcome::Hit);
    }

    #[test]
    fn a_worker_that_fails_or_writes_nothing_falls_back_to_compiling_in_process() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let rt = runtime(&dir);
        let stack = rt.limits().stack_bytes;
        let hash = hex::encode(Sha256::digest(EMPTY_COMPONENT));
        let workers = [
            // Cannot start.
            Worker {
                program: tmp.path().join("no-such-program"),
                args: Vec::new(),
                stack_kib: 0,
            },
            // Fails.
            Worker {
                program: "/bin/false".into(),
                args: Vec::new(),
                stack_kib: 0,
            },
            // Succeeds without writing an entry.
            Worker {
                program: "/bin/true".into(),
                args: Vec::new(),
                stack_kib: 0,
            },
        ];
        for w in workers {
            let mut cache = CompileCache::open(&dir, stack).unwrap();
            cache.worker = Some(w.clone());
            let _ = std::fs::remove_file(cache.entry_path(rt.engine(), &hash));
            let (_, outcome) = cache.compile(rt.engine(), &hash, EMPTY_COMPONENT).unwrap();
            assert_eq!(outcome, CacheOutcome::Compiled, "worker {w:?}");
            assert!(cache.entry_path(rt.engine(), &hash).is_file());
        }
    }

    #[test]
    fn default_dir_is_per_user() {
        let d = default_dir();
        assert!(
            !d.starts_with(std::env::temp_dir().join("kapsule-policy-cache")) || {
                d.to_string_lossy().contains(&current_uid().to_string())
            }
        );
    }
}
