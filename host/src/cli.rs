//! Command line: parses and dispatches. `kapsule run` hands a validated config to
//! [`crate::app::run`]; the other subcommands are operator and author tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::{error, warn};

use crate::config::Config;

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
    Policy(crate::tools::policy::PolicyCommand),
    /// Create and rotate KEKs of the local KMS; list and describe KEKs of any KMS (docs/kms.md).
    #[command(subcommand)]
    Keys(crate::tools::keys::KeysCommand),
    /// Copy a topic into another through Kapsule (re-encrypting under the destination's key).
    Reencrypt(crate::tools::ReencryptArgs),
    /// Decode the `kapsule.enc` descriptors of stored records, read directly from a broker.
    Inspect(crate::tools::InspectArgs),
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
            if let Err(e) = crate::alloc::disable_transparent_huge_pages() {
                warn!(error = %e, "cannot turn transparent huge pages off; memory use and page zeroing may be higher");
            }
            let config = match load_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kapsule: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime
                .enable_all()
                .on_thread_park(crate::alloc::on_worker_park);
            if let Some(threads) = config.proxy.worker_threads {
                runtime.worker_threads(threads);
            }
            let runtime = match runtime.build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kapsule: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::app::run_from_file(config, args.config.clone())) {
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
            match crate::tools::policy::run_policy_command(cmd) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("kapsule policy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keys(cmd) => match crate::tools::keys::run_keys_command(cmd) {
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
