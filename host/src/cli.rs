//! Command line: `kapsule run` starts the proxy; other subcommands are operator and author tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::admin::{self, AdminState, Metrics};
use crate::config::Config;
use crate::proxy::records::RecordStage;
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
    }
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
    let records = RecordStage::new(config.records);
    let proxy = Proxy::bind(&config, metrics.clone(), records).await?;
    let admin_listener = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding admin endpoint on {}", config.admin.listen))?;
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
    let admin_state = AdminState {
        metrics,
        upstream: config.proxy.upstream.clone(),
        policies: None,
    };
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, admin_stop_rx));
    proxy.run(shutdown_signal()).await?;
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    info!("kapsule stopped");
    Ok(())
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
