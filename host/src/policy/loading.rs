//! Start-up loading of policy modules: in parallel, off the async runtime, and without holding
//! up the listeners.
//!
//! [`PolicyRegistry::start`] returns at once with every binding *loading*; a background thread
//! compiles and initializes all modules in parallel (one loader thread each, see
//! [`super::wasm::spawn_loader`]). Until a binding's first version is ready, its topics get
//! [`PolicyError::Loading`](super::PolicyError::Loading) — retriable (Kafka REQUEST_TIMED_OUT),
//! and nothing is forwarded. A module that fails to load leaves its binding *failed*: its topics
//! are refused (non-retriable) until a reload succeeds. [`PolicyRegistry::new`] is `start` plus
//! waiting, and fails if any module failed.
//!
//! **Compile worker.** Compiling a large component (a 17 MiB Python module) makes Cranelift
//! allocate a few hundred MiB that the allocator keeps after compilation. When the running
//! binary calls [`PolicyRegistry::compile_worker_main`] first thing in `main` (the `kapsule`
//! binary does), a module missing from the compile cache is compiled by a short-lived child
//! process — the same executable, started with [`wasm::worker::COMPILE_WORKER_ARG`] — that writes the
//! authenticated cache entry and exits; the proxy then loads that entry as it would a cached one.
//! The proxy's memory after a cold compile is thus what it is after a warm start. If the worker
//! cannot be used (spawn failure, crash, an entry the proxy cannot verify), the module is
//! compiled in-process as before, with a warning. `KAPSULE_POLICY_COMPILE_IN_PROCESS=1` turns the
//! worker off.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::config::PolicyConfig;
use super::{wasm, Inner, PolicyRegistry};

impl PolicyRegistry {
    /// Call first thing in `main` of an executable that loads policies. Run as a compile worker
    /// (first argument [`wasm::worker::COMPILE_WORKER_ARG`], see the module docs) it compiles one module and
    /// returns the exit code to end with; otherwise it returns `None` and marks the executable
    /// as able to act as a worker, so cold compiles of large modules leave the proxy's memory.
    pub fn compile_worker_main() -> Option<ExitCode> {
        if std::env::args_os()
            .nth(1)
            .is_some_and(|a| a == wasm::worker::COMPILE_WORKER_ARG)
        {
            return Some(match wasm::worker::run_compile_worker() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            });
        }
        wasm::worker::mark_capable();
        None
    }

    /// Compiles the rules, starts the Wasm runtime (only if there are bindings) and loads every
    /// binding's module, waiting for all of them. Fails closed: any module that cannot be
    /// loaded fails, with every failure listed. Expects a config that passed
    /// [`PolicyConfig::validate`]. Slow (module compilation); safe to call from any thread,
    /// including an async runtime's (loading runs on its own threads).
    pub fn new(config: &PolicyConfig) -> anyhow::Result<Self> {
        let reg = Self::start(config)?;
        reg.wait_ready(None);
        let failures = reg.load_failures();
        if !failures.is_empty() {
            anyhow::bail!(
                "cannot load {} policy module(s):\n  - {}",
                failures.len(),
                failures.join("\n  - ")
            );
        }
        Ok(reg)
    }

    /// As [`PolicyRegistry::new`] but returns before any module is compiled: modules load in
    /// the background, in parallel; until a binding is ready its topics get a retriable
    /// [`PolicyError::Loading`](super::PolicyError::Loading). Fails only on invalid rules or
    /// selectors, or when the runtime or its cache directory cannot be set up.
    pub fn start(config: &PolicyConfig) -> anyhow::Result<Self> {
        let reg = Self::build(config)?;
        if !reg.inner.bindings.is_empty() {
            let inner = reg.inner.clone();
            std::thread::Builder::new()
                .name("kapsule-policy-start".into())
                .spawn(move || load_all(&inner))
                .map_err(|e| anyhow::anyhow!("starting the policy loader thread: {e}"))?;
        }
        Ok(reg)
    }

    /// Waits until every binding's first load has finished (loaded or failed), at most
    /// `timeout` (`None`: no limit). Returns whether all have finished.
    pub fn wait_ready(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut pending = self.inner.pending.lock();
        while *pending > 0 {
            match deadline {
                None => self.inner.ready.wait(&mut pending),
                Some(d) => {
                    if self.inner.ready.wait_until(&mut pending, d).timed_out() {
                        return *pending == 0;
                    }
                }
            }
        }
        true
    }

    /// One line per binding whose first version failed to load (`policy.bindings[i].module:
    /// why`); empty while loading or when all loaded.
    pub fn load_failures(&self) -> Vec<String> {
        self.inner
            .bindings
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                b.load_error
                    .lock()
                    .as_ref()
                    .map(|e| format!("policy.bindings[{i}].module: {e}"))
            })
            .collect()
    }
}

/// Loads every binding's first version in parallel; each publishes its result as it finishes.
fn load_all(inner: &Arc<Inner>) {
    let rt = inner
        .runtime
        .as_ref()
        .expect("runtime exists when bindings do");
    std::thread::scope(|scope| {
        for b in &inner.bindings {
            let finish = move |result: anyhow::Result<()>| {
                if let Err(e) = result {
                    let error = format!("{e:#}");
                    tracing::error!(policy = %b.label, error = %error, "policy module failed to load; its topics are refused until a reload succeeds");
                    b.stats.record_refusal(&error);
                    *b.load_error.lock() = Some(error);
                }
                *inner.pending.lock() -= 1;
                inner.ready.notify_all();
            };
            let load = move || -> anyhow::Result<()> {
                // Serialized with reloads; a reload that ran first already installed a version.
                let _guard = b.reload_lock.lock();
                if b.current.load().is_some() {
                    return Ok(());
                }
                let file = rt.read_module(&b.module_path)?;
                let m = rt.load(&file, &b.config, b.log.clone())?;
                b.stats
                    .loads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(policy = %b.label, hash = %m.hash(), "policy module loaded");
                b.current.store(Some(Arc::new(m)));
                Ok(())
            };
            if let Err(e) = wasm::spawn_loader(scope, move || {
                finish(load());
                Ok(())
            }) {
                finish(Err(anyhow::anyhow!("starting a policy loader thread: {e}")));
            }
        }
    });
}
