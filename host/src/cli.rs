//! Command line: `kapsule run` starts the proxy; other subcommands are operator and author tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::admin::{self, AdminState, Metrics, PolicyAdmin};
use crate::config::Config;
use crate::crypto::record::RecordEncryptor;
use crate::kms::local::LocalKms;
use crate::kms::KmsConfig;
use crate::policy::{PolicyRegistry, ReloadOutcome};
use crate::proxy::records::{Encryption, RecordStage};
use crate::proxy::Proxy;

/// Kapsule: a Kafka proxy that encrypts records at rest, per topic, with keys from a KMS.
#[derive(Debug, Parser)]
#[command(name = "kapsule", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. With no --config, --listen and --upstream alone run a passthrough proxy.
    Run(RunArgs),
    /// Check a config file and print every problem found (exit 2 if any).
    CheckConfig {
        /// YAML config file.
        config: PathBuf,
    },
    /// Write and check Wasm policies: `policy new NAME`, `policy check FILE --topic T`.
    #[command(subcommand)]
    Policy(crate::policy::cli::PolicyCommand),
    /// Manage KEKs of the local KMS (`kms: { type: local }`) named in a config file.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy a topic into another through Kapsule (re-encrypting under the destination's key).
    Reencrypt(crate::tools::ReencryptArgs),
    /// Decode the `kapsule.enc` descriptors of stored records, read directly from a broker.
    Inspect(crate::tools::InspectArgs),
}

/// `kapsule keys` subcommands (local KMS only; Vault keys are managed with Vault's own tools).
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a KEK (no-op if it exists).
    Create {
        /// Config file whose `kms:` section is a local KMS.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// KEK id.
        key_id: String,
    },
    /// Add a new version to a KEK: new DEKs use it, old records stay readable.
    Rotate {
        /// Config file whose `kms:` section is a local KMS.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// KEK id.
        key_id: String,
    },
    /// List KEKs and their latest versions.
    List {
        /// Config file whose `kms:` section is a local KMS.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
}

/// Flags of `kapsule run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML config file (see examples/). Flags below override its values.
    #[arg(long, short = 'c', env = "KAPSULE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bootstrap listener address clients connect to, IP:PORT (e.g. 0.0.0.0:9192).
    #[arg(long)]
    pub listen: Option<String>,
    /// Bootstrap broker, HOST:PORT (e.g. kafka-1:9092).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Admin HTTP endpoint (/livez, /readyz, /metrics), IP:PORT. Default 127.0.0.1:9190.
    #[arg(long)]
    pub admin: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `kapsule=debug`.
    #[arg(long, env = "KAPSULE_LOG", default_value = "info")]
    pub log: String,
}

/// Entry point of the `kapsule` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(&args.log);
            let config = match load_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kapsule: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kapsule: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "kapsule stopped");
                    eprintln!("kapsule: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Policy(cmd) => {
            init_logging("warn");
            match crate::policy::cli::run_policy_command(cmd) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("kapsule policy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys(cmd) => match run_keys_command(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kapsule keys: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Reencrypt(args) => crate::tools::run_reencrypt(args).unwrap_or_else(|e| {
            eprintln!("kapsule reencrypt: {e:#}");
            ExitCode::FAILURE
        }),
        Command::Inspect(args) => crate::tools::run_inspect(args).unwrap_or_else(|e| {
            eprintln!("kapsule inspect: {e:#}");
            ExitCode::FAILURE
        }),
    }
}

fn local_kms_from(config: &std::path::Path) -> anyhow::Result<LocalKms> {
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    match config.kms {
        Some(KmsConfig::Local(local)) => LocalKms::open(&local),
        Some(KmsConfig::Vault(_)) => anyhow::bail!(
            "the config's KMS is Vault: manage its keys with `bao`/`vault write -f transit/keys/NAME`"
        ),
        None => anyhow::bail!("the config has no `kms:` section"),
    }
}

fn run_keys_command(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { config, key_id } => {
            let created = local_kms_from(&config)?.create_key(&key_id)?;
            println!(
                "{key_id}: {}",
                if created { "created" } else { "already exists" }
            );
        }
        KeysCommand::Rotate { config, key_id } => {
            let version = local_kms_from(&config)?.rotate_key(&key_id)?;
            println!("{key_id}: now at version {version}");
        }
        KeysCommand::List { config } => {
            for k in local_kms_from(&config)?.list_keys() {
                println!("{}\tv{}", k.key_id, k.latest_version);
            }
        }
    }
    Ok(())
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(args: &RunArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => match (&args.listen, &args.upstream) {
            (Some(l), Some(u)) => Config::from_flags(l.clone(), u.clone()),
            _ => {
                return Err(
                    "no --config given: pass --listen HOST:PORT and --upstream HOST:PORT to run a passthrough proxy"
                        .into(),
                )
            }
        },
    };
    config
        .apply_overrides(
            args.listen.clone(),
            args.upstream.clone(),
            args.admin.clone(),
        )
        .map_err(|e| e.to_string())?;
    Ok(config)
}

/// Runs the proxy and admin endpoint until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let encryption = build_encryption(&config, &metrics)?;
    let policies: Option<Arc<dyn PolicyAdmin>> = encryption
        .as_ref()
        .map(|e| Arc::new(PolicyAdminHandle(e.policy.clone())) as Arc<dyn PolicyAdmin>);
    if let Some(enc) = &encryption {
        spawn_sighup_reload(enc.policy.clone());
    }
    let records = RecordStage::new(config.records, encryption)
        .with_decompression_budget(config.proxy.decompression_budget());
    let proxy = Proxy::bind(&config, metrics.clone(), records).await?;
    let admin_listener = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding admin endpoint on {}", config.admin.listen))?;
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    let admin_state = AdminState::new(
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
fn build_encryption(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Option<Encryption>> {
    let Some(policy_config) = &config.policy else {
        return Ok(None);
    };
    let kms = match &config.kms {
        Some(k) => k.build().context("starting the KMS client")?,
        // Validation guarantees a KMS when anything can encrypt; a policy section that only
        // passes or rejects still needs a KMS to decrypt what is already stored.
        None => anyhow::bail!("a `policy:` section needs a `kms:` section"),
    };
    let encryptor = Arc::new(RecordEncryptor::new(kms, config.deks.clone()));
    metrics.register(encryptor.metrics().clone());
    // Modules compile in the background; their topics get a retriable error until ready.
    let policy = PolicyRegistry::start(policy_config).context("loading policies")?;
    metrics.register(Arc::new(crate::admin::metrics::PolicyMetrics(
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
struct PolicyAdminHandle(PolicyRegistry);

impl PolicyAdmin for PolicyAdminHandle {
    fn status_json(&self) -> String {
        serde_json::to_string_pretty(&self.0.status())
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    fn ready(&self) -> Result<(), String> {
        if self.0.wait_ready(Some(std::time::Duration::ZERO)) {
            Ok(())
        } else {
            Err("policy modules are still compiling".into())
        }
    }

    fn reload(&self) -> Result<String, String> {
        let outcomes = self.0.reload();
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

/// SIGHUP reloads every policy module (compiled off the hot path, on a blocking thread).
fn spawn_sighup_reload(policy: PolicyRegistry) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading policies");
            let p = policy.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (binding, outcome) in p.reload() {
                    info!(%binding, ?outcome, "policy reload");
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
