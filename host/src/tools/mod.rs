//! Operator and author tools, apart from the proxy's runtime: `kapsule reencrypt` (copy a topic
//! into another through Kapsule, i.e. under the destination's key), `kapsule inspect` (decode the
//! `kapsule.enc` descriptors of stored records without any key), see docs/tools.md; and the
//! KEKs' `kapsule keys` ([`keys`]: create/rotate on the local KMS, list/describe on every KMS); the
//! policy author's `kapsule policy new` (a template with its SDK package, [`scaffold`]) and
//! `kapsule policy check` (run a module as production would, [`policy`]).

pub mod client;
pub mod inspect;
pub mod keys;
pub mod policy;
pub mod reencrypt;
pub mod scaffold;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::tools::client::KafkaClient;
use crate::tools::inspect::InspectOptions;
use crate::tools::reencrypt::{ReencryptOptions, StartAt};

/// Flags of `kapsule reencrypt`.
#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// Kapsule's listener, HOST:PORT (not the broker: records must be decrypted and re-encrypted).
    #[arg(long)]
    pub bootstrap: String,
    /// Source topic.
    #[arg(long)]
    pub from: String,
    /// Destination topic; must exist with at least as many partitions as the source.
    #[arg(long)]
    pub to: String,
    /// Start offset for every partition without a checkpoint entry (default: earliest).
    #[arg(long)]
    pub start_offset: Option<i64>,
    /// Append the offset mapping (JSON lines) to this file instead of stdout.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Checkpoint file: resume from it if it exists; rewritten after every acknowledged batch.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Most records per produce batch.
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
    /// Timeout of each connect and request, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Flags of `kapsule inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The broker, HOST:PORT (read directly, so records are as stored, encrypted).
    #[arg(long, required_unless_present = "header_base64")]
    pub bootstrap: Option<String>,
    /// Topic to read.
    #[arg(long, required_unless_present = "header_base64")]
    pub topic: Option<String>,
    /// Only this partition (default: all).
    #[arg(long)]
    pub partition: Option<i32>,
    /// First offset (default: earliest).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Most records per partition.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Decode one `kapsule.enc` header value given in base64, offline.
    #[arg(long, conflicts_with_all = ["bootstrap", "topic"])]
    pub header_base64: Option<String>,
    /// Timeout of each connect and request, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `kapsule reencrypt`: mapping lines to `--mapping` or stdout, then a `{"summary": ..}`
/// line on stdout.
pub fn run_reencrypt(args: ReencryptArgs) -> anyhow::Result<ExitCode> {
    let opts = ReencryptOptions {
        start: args.start_offset.map_or(StartAt::Earliest, StartAt::Offset),
        batch_records: args.batch_records,
        checkpoint: args.checkpoint.clone(),
        ..ReencryptOptions::new(args.from, args.to)
    };
    let mut sink: Box<dyn Write> = match &args.mapping {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening mapping file {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let report = runtime()?.block_on(async {
        let mut client = KafkaClient::connect(&args.bootstrap, timeout).await?;
        reencrypt::reencrypt(&mut client, &opts, &mut *sink).await
    })?;
    sink.flush().context("flushing the mapping")?;
    drop(sink);
    println!("{}", serde_json::json!({ "summary": report }));
    eprintln!(
        "kapsule reencrypt: copied {} records from {:?} to {:?}{}",
        report.copied,
        report.from,
        report.to,
        if report.resumed {
            " (resumed from checkpoint)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `kapsule inspect`: one JSON line per record (or per `--header-base64`) on stdout.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    if let Some(b64) = &args.header_base64 {
        let d = inspect::decode_header_base64(b64)?;
        println!("{}", serde_json::to_string(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(bootstrap), Some(topic)) = (args.bootstrap, args.topic) else {
        anyhow::bail!("pass --bootstrap HOST:PORT and --topic T, or --header-base64 STRING");
    };
    let opts = InspectOptions {
        topic,
        partition: args.partition,
        offset: args.offset,
        limit: args.limit,
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut stdout = std::io::stdout().lock();
    let n = runtime()?.block_on(async {
        let mut client = KafkaClient::connect(&bootstrap, timeout).await?;
        inspect::inspect(&mut client, &opts, &mut |r| {
            serde_json::to_writer(&mut stdout, r)?;
            stdout.write_all(b"\n")?;
            Ok(())
        })
        .await
    })?;
    eprintln!("kapsule inspect: {n} records");
    Ok(ExitCode::SUCCESS)
}
