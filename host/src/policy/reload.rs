//! Reloading policy modules: SIGHUP, `POST /policies/reload` and the file watcher re-read each
//! binding's module file and swap in a new version when its content changed.
//!
//! Bindings, rules and limits are read at start-up only: the registry's topic resolution, rule
//! set and sandbox are built once. SIGHUP and `POST /policies/reload` re-read the config file
//! first ([`PolicyRegistry::reload_from`]) and refuse the whole reload, saying a restart is
//! needed, when its `policy:` section no longer matches the running one — a binding added to the
//! YAML is never silently ignored.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::config::PolicyConfig;
use super::{wasm, watch, PolicyRegistry};

/// Outcome of reloading one binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The file's content hash did not change.
    Unchanged,
    /// A new version was loaded and now serves.
    Reloaded {
        /// SHA-256 of the new version.
        content_hash: String,
    },
    /// The new version failed; the old one keeps serving.
    Refused {
        /// Why.
        error: String,
    },
}

/// A reload refused before any module was read: the config file changed what only a restart
/// applies, or no longer loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReloadRefused(pub String);

/// Whether two settings are the same: their Debug forms hold every setting.
fn same(a: &impl std::fmt::Debug, b: &impl std::fmt::Debug) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// One line per entry of list `what` added, removed or changed between `running` and `new`.
fn list_changes<T: std::fmt::Debug>(what: &str, running: &[T], new: &[T], out: &mut Vec<String>) {
    for i in 0..running.len().max(new.len()) {
        match (running.get(i), new.get(i)) {
            (Some(_), None) => out.push(format!("policy.{what}[{i}] was removed")),
            (None, Some(_)) => out.push(format!("policy.{what}[{i}] was added")),
            (Some(a), Some(b)) if !same(a, b) => {
                out.push(format!("policy.{what}[{i}] was changed"))
            }
            _ => {}
        }
    }
}

/// What differs between the running `policy:` section and `new` (`None`: the file has none),
/// one line each; empty when they are the same.
fn config_changes(running: &PolicyConfig, new: Option<&PolicyConfig>) -> Vec<String> {
    let Some(new) = new else {
        return vec!["the `policy:` section was removed".into()];
    };
    let mut out = Vec::new();
    list_changes("bindings", &running.bindings, &new.bindings, &mut out);
    list_changes("rules", &running.rules, &new.rules, &mut out);
    if !same(&running.limits, &new.limits) {
        out.push("policy.limits was changed".into());
    }
    if running.unmatched_topics != new.unmatched_topics {
        out.push("policy.unmatched_topics was changed".into());
    }
    if running.module_cache_dir != new.module_cache_dir || running.watch != new.watch {
        out.push("policy.module_cache_dir or policy.watch was changed".into());
    }
    out
}

impl PolicyRegistry {
    /// SIGHUP and `POST /policies/reload`: re-reads `config_file` (the file Kapsule started
    /// with; `None` when it started from flags only) through `load_policy` (which parses and
    /// validates the whole file and returns its `policy:` section, or every problem as one
    /// message) and, when that section is the one
    /// running, reloads every binding's module ([`PolicyRegistry::reload`]). Refuses the whole
    /// reload — nothing is reloaded — when the file no longer loads, or changed bindings, rules
    /// or limits, which only a restart applies; the error names each change. Blocking and slow.
    pub fn reload_from(
        &self,
        config_file: Option<&Path>,
        load_policy: impl FnOnce(&Path) -> Result<Option<PolicyConfig>, String>,
    ) -> Result<Vec<(String, ReloadOutcome)>, ReloadRefused> {
        if let Some(path) = config_file {
            let policy = load_policy(path).map_err(|e| {
                ReloadRefused(format!(
                    "config file {} no longer loads, nothing was reloaded: {e}",
                    path.display()
                ))
            })?;
            let changes = config_changes(&self.inner.started_with, policy.as_ref());
            if !changes.is_empty() {
                return Err(ReloadRefused(format!(
                    "config file {} changed since start-up: {}. Bindings, rules and limits are \
                     read at start-up only: restart Kapsule to apply them. Nothing was reloaded \
                     (module files included)",
                    path.display(),
                    changes.join("; ")
                )));
            }
        }
        Ok(self.reload())
    }

    /// Re-reads every binding's module file; a file whose content changed is compiled,
    /// instantiated and initialized, then swapped in atomically (batches already running finish
    /// under the old version). A version that fails is refused and the old one keeps serving.
    /// Blocking and slow (compilation): call from a blocking thread. Wire to SIGHUP and
    /// `POST /policies/reload`.
    pub fn reload(&self) -> Vec<(String, ReloadOutcome)> {
        (0..self.inner.bindings.len())
            .map(|i| {
                (
                    self.inner.bindings[i].label.to_string(),
                    self.reload_binding(i),
                )
            })
            .collect()
    }

    /// Reloads the bindings whose module file is `path` (used by the watcher).
    pub(crate) fn reload_path(&self, path: &std::path::Path) -> Vec<(String, ReloadOutcome)> {
        let mut out = Vec::new();
        for (i, b) in self.inner.bindings.iter().enumerate() {
            if watch::same_file(&b.module_path, path) {
                out.push((b.label.to_string(), self.reload_binding(i)));
            }
        }
        out
    }

    fn reload_binding(&self, i: usize) -> ReloadOutcome {
        let b = &self.inner.bindings[i];
        let _guard = b.reload_lock.lock();
        let rt = self
            .inner
            .runtime
            .as_ref()
            .expect("runtime exists when bindings do");
        let outcome = (|| -> anyhow::Result<ReloadOutcome> {
            let file = rt.read_module(&b.module_path)?;
            if b.current
                .load()
                .as_ref()
                .is_some_and(|m| m.hash() == file.hash())
            {
                return Ok(ReloadOutcome::Unchanged);
            }
            let m = std::thread::scope(|scope| {
                wasm::join_loader(wasm::spawn_loader(scope, || {
                    rt.load(&file, &b.config, b.log.clone())
                }))
            })?;
            let content_hash = m.hash().to_string();
            b.current.store(Some(Arc::new(m)));
            b.load_error.lock().take();
            Ok(ReloadOutcome::Reloaded { content_hash })
        })();
        match outcome {
            Ok(o @ ReloadOutcome::Reloaded { .. }) => {
                b.stats
                    .loads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let ReloadOutcome::Reloaded { content_hash } = &o {
                    tracing::info!(policy = %b.label, hash = %content_hash, "policy module reloaded");
                }
                o
            }
            Ok(o) => o,
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(policy = %b.label, error = %error, "policy module refused; the previous version keeps serving");
                b.stats.record_refusal(&error);
                ReloadOutcome::Refused { error }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> PolicyConfig {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn an_added_or_edited_binding_is_a_change_that_needs_a_restart() {
        let one = "bindings:\n  - {topics: a, module: /m/a.wasm, allowed_key_ids: [k]}\n";
        let two = "bindings:\n  - {topics: a, module: /m/a.wasm, allowed_key_ids: [k]}\n  - {topics: b, module: /m/b.wasm, allowed_key_ids: [k]}\n";
        let edited = "bindings:\n  - {topics: a, module: /m/a.wasm, allowed_key_ids: [k, j]}\n";
        assert!(config_changes(&section(one), Some(&section(one))).is_empty());
        assert_eq!(
            config_changes(&section(one), Some(&section(two))),
            vec!["policy.bindings[1] was added"]
        );
        assert_eq!(
            config_changes(&section(two), Some(&section(one))),
            vec!["policy.bindings[1] was removed"]
        );
        assert_eq!(
            config_changes(&section(one), Some(&section(edited))),
            vec!["policy.bindings[0] was changed"]
        );
        assert_eq!(
            config_changes(&section(one), None),
            vec!["the `policy:` section was removed"]
        );
    }
}
