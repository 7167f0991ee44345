//! App assembly: builds the KMS, the encryption stage, policies, the admin endpoint and the
//! proxy from a validated [`Config`], wires signals (SIGHUP reload, SIGTERM/SIGINT drain) and
//! runs until shutdown. [`crate::cli`] parses the command line and calls [`run`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, PolicyAdmin};
use crate::config::Config;
use crate::crypto::record::RecordEncryptor;
use crate::metrics::MetricsRegistry;
use crate::policy::config::PolicyConfig;
use crate::policy::{PolicyRegistry, ReloadOutcome};
use crate::proxy::metrics::Metrics;
use crate::proxy::records::{Encryption, RecordStage};
use crate::proxy::Proxy;

/// Runs the proxy and admin endpoint until SIGTERM or SIGINT, for a config built from flags
/// only (SIGHUP and `POST /policies/reload` then reload module files without re-reading a config).
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_from_file(config, None).await
}

/// Runs the proxy and admin endpoint until SIGTERM or SIGINT. `config_file` is the file `config`
/// was loaded from: SIGHUP and `POST /policies/reload` re-read it and refuse to reload when its
/// `policy:` section changed (see [`PolicyRegistry::reload_from`]).
pub async fn run_from_file(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let registry = Arc::new(MetricsRegistry::default());
    let metrics = Arc::new(Metrics::default());
    if config.admin.principal_metrics {
        metrics.enable_principal_label(config.admin.max_principal_labels);
    }
    registry.register(metrics.clone());
    let encryption = build_encryption(&config, &registry)?;
    let policies: Option<Arc<dyn PolicyAdmin>> = encryption.as_ref().map(|e| {
        Arc::new(PolicyAdminHandle {
            policy: e.policy.clone(),
            config_file: config_file.clone(),
        }) as Arc<dyn PolicyAdmin>
    });
    if let Some(enc) = &encryption {
        spawn_sighup_reload(enc.policy.clone(), config_file);
    }
    let memory = Arc::new(config.proxy.memory_budget());
    spawn_memory_trimmer(memory.clone());
    registry.register(memory.clone());
    let records = RecordStage::new(config.records, encryption)
        .with_decompression_budget(config.proxy.decompression_budget())
        .with_batch_decompression_limit(config.proxy.max_decompressed_bytes_per_batch)
        .with_memory_budget(memory);
    for warning in config.fleet_warnings() {
        warn!("{warning}");
    }
    let proxy = Proxy::bind(&config.proxy, metrics.clone(), records).await?;
    let admin_listener = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding admin endpoint on {}", config.admin.listen))?;
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    let admin_state = AdminState::new(
        registry,
        metrics,
        config.proxy.upstream.clone(),
        policies,
        &config.admin,
    )?;
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, admin_stop_rx));
    proxy.run(shutdown_signal()).await?;
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    info!("kapsule stopped");
    Ok(())
}

/// Builds the KMS client, DEK manager and policy registry when the config has a `policy:`
/// section. Policy modules compile in the background (see `PolicyRegistry::start`).
fn build_encryption(
    config: &Config,
    registry: &MetricsRegistry,
) -> anyhow::Result<Option<Encryption>> {
    let Some(policy_config) = &config.policy else {
        return Ok(None);
    };
    let kms = match &config.kms {
        Some(k) => k.build().context("starting the KMS client")?,
        // Validation guarantees a KMS when anything can encrypt; a policy section that only
        // passes or rejects still needs a KMS to decrypt what is already stored.
        None => anyhow::bail!("a `policy:` section needs a `kms:` section"),
    };
    let mut encryptor =
        RecordEncryptor::new(kms, config.deks.clone()).with_record_format(config.record_format);
    let schema_registry = match &config.schema_registry {
        Some(r) => Some(Arc::new(
            crate::schema::SchemaRegistry::new(r).context("starting the schema registry client")?,
        )),
        None => None,
    };
    if let Some(r) = &schema_registry {
        encryptor = encryptor.with_schema_registry(r.clone());
    }
    let encryptor = Arc::new(encryptor);
    registry.register(encryptor.metrics().clone());
    registry.register(encryptor.deks().kms_metrics().clone());
    // Modules compile in the background; their topics get a retriable error until ready.
    let policy = PolicyRegistry::start(policy_config).context("loading policies")?;
    // Policies describe schemas from the same client and cache the record stage uses.
    if let Some(r) = schema_registry {
        policy.attach_schema_registry(r);
    }
    registry.register(Arc::new(crate::policy::metrics::PolicyMetrics(
        policy.clone(),
    )));
    if policy_config.watch {
        policy
            .watch()
            .context("watching policy modules for changes")?;
    }
    Ok(Some(Encryption { encryptor, policy }))
}

/// Adapts the policy registry to the admin endpoint.
struct PolicyAdminHandle {
    policy: PolicyRegistry,
    /// The config file Kapsule started with, re-read on reload.
    config_file: Option<PathBuf>,
}

impl PolicyAdmin for PolicyAdminHandle {
    fn status_json(&self) -> String {
        serde_json::to_string_pretty(&self.policy.status())
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    fn ready(&self) -> Result<(), String> {
        if self.policy.wait_ready(Some(std::time::Duration::ZERO)) {
            Ok(())
        } else {
            Err("policy modules are still compiling".into())
        }
    }

    fn reload(&self) -> Result<String, String> {
        let outcomes = match self
            .policy
            .reload_from(self.config_file.as_deref(), policy_section)
        {
            Ok(o) => o,
            Err(refused) => {
                error!(error = %refused, "policy reload refused");
                return Err(serde_json::json!({ "error": refused.to_string() }).to_string());
            }
        };
        let text = serde_json::to_string_pretty(&outcomes).unwrap_or_default();
        if outcomes
            .iter()
            .any(|(_, o)| matches!(o, ReloadOutcome::Refused { .. }))
        {
            Err(text)
        } else {
            Ok(text)
        }
    }
}

/// The `policy:` section of the config file at `path`, loaded and validated as at start-up
/// (what a policy reload compares with the running section).
fn policy_section(path: &Path) -> Result<Option<PolicyConfig>, String> {
    Config::load(path)
        .map(|c| c.policy)
        .map_err(|e| e.to_string())
}

/// Every few seconds, frees the pooled frame buffers no frame needed in the last period and,
/// once a burst is over (buffers were freed, or the memory budget's use fell well below its
/// peak of the period), has every worker give freed memory back to the OS, so memory goes back
/// after a burst (see [`crate::kafka::frame::pool`] and [`crate::alloc`]).
fn spawn_memory_trimmer(memory: Arc<crate::proxy::budget::MemoryBudget>) {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(5);
    /// A fall in charged bytes worth giving back.
    const FALL: usize = 16 * 1024 * 1024;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let freed = crate::kafka::frame::pool::trim();
            let peak = memory.take_peak();
            let fell = peak.saturating_sub(memory.in_use());
            if freed > 0 || fell >= FALL {
                tracing::debug!(
                    freed_bytes = freed,
                    budget_fell_bytes = fell,
                    "burst over: idle frame buffers freed, freed memory given back to the OS"
                );
                crate::alloc::release_on_every_worker().await;
            }
        }
    });
}

/// SIGHUP re-reads `config_file` and reloads every policy module (compiled off the hot path, on
/// a blocking thread), or refuses with an ERROR line when the file's `policy:` section changed.
fn spawn_sighup_reload(policy: PolicyRegistry, config_file: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading policies");
            let (p, file) = (policy.clone(), config_file.clone());
            let _ = tokio::task::spawn_blocking(move || {
                match p.reload_from(file.as_deref(), policy_section) {
                    Ok(outcomes) => {
                        for (binding, outcome) in outcomes {
                            info!(%binding, ?outcome, "policy reload");
                        }
                    }
                    Err(refused) => error!(error = %refused, "policy reload refused"),
                }
            })
            .await;
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
