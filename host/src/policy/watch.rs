//! Watches policy module files and reloads bindings when they change.
//!
//! The parent directory of each module is watched (not the file itself), so replacing a module by
//! rename, as `cargo build` and most deploy tools do, is seen. Events are debounced: a reload runs
//! once the file has been quiet for [`DEBOUNCE`], on the watcher's own thread, never on the
//! request path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Weak;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};

use super::{Inner, PolicyRegistry, ReloadOutcome};

/// Quiet time after the last event before a reload.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

/// Owns the OS watcher; dropping it stops watching and ends the reload thread.
pub(crate) struct ModuleWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// `dir/file` with `dir` canonicalized (the file itself may not exist right now).
fn normalize(p: &Path) -> PathBuf {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().unwrap_or(parent);
    match p.file_name() {
        Some(f) => parent.join(f),
        None => parent,
    }
}

/// Whether two paths name the same module file.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    normalize(a) == normalize(b)
}

impl ModuleWatcher {
    pub(crate) fn start(registry: Weak<Inner>, modules: &[PathBuf]) -> anyhow::Result<Self> {
        let wanted: HashSet<PathBuf> = modules.iter().map(|p| normalize(p)).collect();
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let filter = wanted.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if ev.kind.is_access() {
                        return;
                    }
                    for p in ev.paths {
                        let n = normalize(&p);
                        if filter.contains(&n) {
                            let _ = tx.send(n);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "policy module watcher error"),
            })
            .context("creating the policy module file watcher")?;
        let dirs: HashSet<PathBuf> = wanted
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        for d in &dirs {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .with_context(|| format!("watching policy module directory {}", d.display()))?;
        }
        std::thread::Builder::new()
            .name("kapsule-policy-watch".into())
            .spawn(move || reload_loop(registry, rx))
            .context("starting the policy reload thread")?;
        Ok(Self { _watcher: watcher })
    }
}

fn reload_loop(registry: Weak<Inner>, rx: mpsc::Receiver<PathBuf>) {
    let mut pending: HashSet<PathBuf> = HashSet::new();
    let mut last = Instant::now();
    loop {
        let got = if pending.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(DEBOUNCE.saturating_sub(last.elapsed()))
        };
        match got {
            Ok(p) => {
                pending.insert(p);
                last = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(inner) = registry.upgrade() else {
                    return;
                };
                let reg = PolicyRegistry { inner };
                for p in pending.drain() {
                    if !p.is_file() {
                        // Mid-replace (deleted, not yet renamed into place): wait for the next event.
                        continue;
                    }
                    for (binding, outcome) in reg.reload_path(&p) {
                        if let ReloadOutcome::Refused { error } = &outcome {
                            tracing::warn!(policy = %binding, error = %error, "watched policy module change refused");
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
