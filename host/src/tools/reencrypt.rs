//! `kapsule reencrypt`: copies every record of one topic into another through Kapsule, so the
//! records are decrypted under the source topic's key and encrypted under the destination's.
//!
//! For each source partition it reads from the start offset (or the checkpoint) up to the end
//! offset captured when the partition's copy begins, and produces each record (key, value,
//! headers, timestamp) to the same partition number of the destination with `acks = -1`, one
//! produce batch at a time. Every copied record yields one mapping line
//! `{"partition", "from_offset", "to_offset"}`; after each acknowledged batch the mapping lines
//! are flushed and the checkpoint (next source offset per partition) is rewritten atomically.
//!
//! Delivery is at least once: a crash between the broker's acknowledgement and the checkpoint
//! write copies that batch again on restart (the mapping file then shows both copies).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::crypto::wire::HEADER_KEY;
use crate::kafka::records::{Record, RecordBatch};
use crate::tools::client::{Cluster, TopicPartition};

/// Timestamp-type attribute bit of a v2 batch (set: LogAppendTime).
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Fetches returning nothing below the end offset before giving up.
const MAX_EMPTY_FETCHES: u32 = 50;

/// Where to start in partitions the checkpoint does not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The partition's earliest offset.
    Earliest,
    /// This offset in every partition (must not be below the earliest offset).
    Offset(i64),
}

/// Settings of one reencrypt run.
#[derive(Debug, Clone)]
pub struct ReencryptOptions {
    /// Source topic (read through Kapsule, hence decrypted).
    pub from: String,
    /// Destination topic (written through Kapsule, hence encrypted under its rule).
    pub to: String,
    /// Start offset for partitions without a checkpoint entry.
    pub start: StartAt,
    /// Most records per produce batch (and per checkpoint step). Default 500.
    pub batch_records: usize,
    /// `max_bytes` of each Fetch. Default 4 MiB.
    pub fetch_max_bytes: i32,
    /// Checkpoint file: read at start if it exists, rewritten after every acknowledged batch.
    pub checkpoint: Option<PathBuf>,
}

impl ReencryptOptions {
    /// Options with the defaults above, starting at the earliest offsets, no checkpoint.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            start: StartAt::Earliest,
            batch_records: 500,
            fetch_max_bytes: 4 * 1024 * 1024,
            checkpoint: None,
        }
    }
}

/// Progress of a (possibly interrupted) copy: the next source offset to copy, per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Source topic.
    pub from: String,
    /// Destination topic.
    pub to: String,
    /// Next source offset to copy, per source partition.
    pub next: BTreeMap<i32, i64>,
}

impl Checkpoint {
    /// Reads a checkpoint; `Ok(None)` if the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading checkpoint {}", path.display()))
            }
        };
        let cp = serde_json::from_str(&text).with_context(|| {
            format!(
                "checkpoint {} is not a kapsule reencrypt checkpoint (delete it to start over)",
                path.display()
            )
        })?;
        Ok(Some(cp))
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let body = serde_json::to_vec_pretty(self).context("serialising the checkpoint")?;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("replacing checkpoint {}", path.display()))?;
        Ok(())
    }
}

/// One copied record: where it was and where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMapping {
    /// Partition number (the same in both topics).
    pub partition: i32,
    /// Offset in the source topic.
    pub from_offset: i64,
    /// Offset in the destination topic.
    pub to_offset: i64,
}

/// What happened to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// Partition number.
    pub partition: i32,
    /// First source offset this run looked at.
    pub start_offset: i64,
    /// Source end offset captured at start (exclusive).
    pub end_offset: i64,
    /// Records copied by this run.
    pub copied: u64,
    /// Offsets skipped without copying (control batches, compaction gaps).
    pub skipped_offsets: u64,
}

/// Summary of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReencryptReport {
    /// Source topic.
    pub from: String,
    /// Destination topic.
    pub to: String,
    /// Per-partition results, by partition number.
    pub partitions: Vec<PartitionReport>,
    /// Records copied by this run, all partitions.
    pub copied: u64,
    /// True if the checkpoint file existed and was resumed from.
    pub resumed: bool,
}

/// Copies `from` into `to`, writing one JSON mapping line per record to `mapping`.
///
/// `cluster` is normally a [`crate::tools::client::KafkaClient`] connected to Kapsule: it reads
/// decrypted and writes through the encrypt path. Errors leave the checkpoint at the last
/// acknowledged batch; rerun with the same checkpoint to continue.
pub async fn reencrypt<C: Cluster>(
    cluster: &mut C,
    opts: &ReencryptOptions,
    mapping: &mut dyn Write,
) -> anyhow::Result<ReencryptReport> {
    if opts.from == opts.to {
        bail!(
            "--from and --to are both {:?}: reencrypt copies into a different topic",
            opts.from
        );
    }
    if opts.batch_records == 0 {
        bail!("--batch-records must be at least 1");
    }
    let src_parts = cluster
        .partitions(&opts.from)
        .await
        .with_context(|| format!("looking up source topic {:?}", opts.from))?;
    let dst_parts = cluster
        .partitions(&opts.to)
        .await
        .with_context(|| format!("looking up destination topic {:?}", opts.to))?;
    if let Some(missing) = src_parts.iter().find(|p| !dst_parts.contains(p)) {
        bail!(
            "destination {:?} has {} partitions but source {:?} has {} (partition {missing} has no counterpart): create {:?} with at least as many partitions",
            opts.to,
            dst_parts.len(),
            opts.from,
            src_parts.len(),
            opts.to
        );
    }
    let saved = match &opts.checkpoint {
        Some(path) => Checkpoint::load(path)?.map(|cp| (path, cp)),
        None => None,
    };
    let (mut checkpoint, resumed) = match saved {
        Some((path, cp)) => {
            if cp.from != opts.from || cp.to != opts.to {
                bail!(
                    "checkpoint {} belongs to a copy {:?} -> {:?}, not {:?} -> {:?}: use another --checkpoint file",
                    path.display(),
                    cp.from,
                    cp.to,
                    opts.from,
                    opts.to
                );
            }
            (cp, true)
        }
        None => (
            Checkpoint {
                from: opts.from.clone(),
                to: opts.to.clone(),
                next: BTreeMap::new(),
            },
            false,
        ),
    };
    let mut report = ReencryptReport {
        from: opts.from.clone(),
        to: opts.to.clone(),
        partitions: Vec::new(),
        copied: 0,
        resumed,
    };
    for &p in &src_parts {
        let r = copy_partition(cluster, opts, p, &mut checkpoint, mapping).await?;
        report.copied += r.copied;
        report.partitions.push(r);
    }
    Ok(report)
}

async fn copy_partition<C: Cluster>(
    cluster: &mut C,
    opts: &ReencryptOptions,
    p: i32,
    checkpoint: &mut Checkpoint,
    mapping: &mut dyn Write,
) -> anyhow::Result<PartitionReport> {
    let from = TopicPartition::new(&opts.from, p);
    let to = TopicPartition::new(&opts.to, p);
    let (earliest, end) = cluster.offsets(from).await?;
    let mut next = match (checkpoint.next.get(&p), opts.start) {
        (Some(&o), _) => o,
        (None, StartAt::Earliest) => earliest,
        (None, StartAt::Offset(o)) => o,
    };
    if next < earliest {
        bail!(
            "{from}: records from offset {next} were deleted (earliest is now {earliest}); copying from {next} is impossible, pass --start-offset {earliest} or a new checkpoint to accept the loss"
        );
    }
    let mut report = PartitionReport {
        partition: p,
        start_offset: next,
        end_offset: end,
        copied: 0,
        skipped_offsets: 0,
    };
    let mut empty = 0;
    while next < end {
        let batches = cluster
            .fetch(from, next, opts.fetch_max_bytes)
            .await
            .with_context(|| format!("fetching {from} at offset {next}"))?;
        // Records to copy, with absolute offsets and timestamps, and how far the fetch reached.
        let mut pending: Vec<(i64, i64, Record)> = Vec::new();
        let mut reached = next;
        for b in batches {
            let last = b.base_offset + i64::from(b.last_offset_delta);
            if last >= next {
                reached = reached.max((last + 1).min(end));
            }
            if b.is_control() {
                continue;
            }
            let log_append = b.attributes & ATTR_LOG_APPEND_TIME != 0;
            for r in b.records {
                let offset = b.base_offset + i64::from(r.offset_delta);
                if offset < next || offset >= end {
                    continue;
                }
                if r.headers
                    .iter()
                    .any(|h| h.key.as_ref() == HEADER_KEY.as_bytes())
                {
                    bail!(
                        "{from}@{offset} still carries a {HEADER_KEY} header: records are read encrypted. --bootstrap must be Kapsule's listener (with a key for {:?}), not the broker",
                        from.topic
                    );
                }
                let ts = if log_append {
                    b.max_timestamp
                } else {
                    b.base_timestamp + r.timestamp_delta
                };
                pending.push((offset, ts, r));
            }
        }
        if pending.is_empty() && reached == next {
            empty += 1;
            if empty >= MAX_EMPTY_FETCHES {
                bail!(
                    "{from}: {empty} fetches at offset {next} returned nothing although the end offset is {end} (records larger than --fetch-max-bytes {}?)",
                    opts.fetch_max_bytes
                );
            }
            continue;
        }
        empty = 0;
        pending.sort_by_key(|(o, _, _)| *o);
        for chunk in pending.chunks(opts.batch_records) {
            let batch = produce_batch(chunk);
            let base = cluster
                .produce(to, &batch)
                .await
                .with_context(|| format!("producing {} records to {to}", chunk.len()))?;
            for (i, (offset, _, _)) in chunk.iter().enumerate() {
                let m = OffsetMapping {
                    partition: p,
                    from_offset: *offset,
                    to_offset: base + i as i64,
                };
                serde_json::to_writer(&mut *mapping, &m).context("writing the offset mapping")?;
                mapping
                    .write_all(b"\n")
                    .context("writing the offset mapping")?;
            }
            mapping.flush().context("flushing the offset mapping")?;
            let last = chunk.last().expect("chunks are non-empty").0;
            report.copied += chunk.len() as u64;
            report.skipped_offsets += (last - next).max(0) as u64 + 1 - chunk.len() as u64;
            next = last + 1;
            save(opts, checkpoint, p, next)?;
        }
        if reached > next {
            report.skipped_offsets += (reached - next) as u64;
            next = reached;
            save(opts, checkpoint, p, next)?;
        }
    }
    checkpoint.next.insert(p, next);
    Ok(report)
}

fn save(opts: &ReencryptOptions, cp: &mut Checkpoint, p: i32, next: i64) -> anyhow::Result<()> {
    cp.next.insert(p, next);
    match &opts.checkpoint {
        Some(path) => cp.save(path),
        None => Ok(()),
    }
}

/// Builds an uncompressed, non-idempotent CreateTime batch of the records, keeping key, value,
/// headers and absolute timestamps.
fn produce_batch(records: &[(i64, i64, Record)]) -> RecordBatch {
    let base_ts = records.first().map_or(0, |r| r.1);
    let max_ts = records.iter().map(|r| r.1).max().unwrap_or(base_ts);
    RecordBatch {
        base_offset: 0,
        partition_leader_epoch: -1,
        attributes: 0,
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records: records
            .iter()
            .enumerate()
            .map(|(i, (_, ts, r))| Record {
                attributes: 0,
                timestamp_delta: ts - base_ts,
                offset_delta: i as i32,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            })
            .collect(),
    }
}
