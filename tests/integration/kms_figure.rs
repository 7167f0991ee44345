//! The KMS figures of the note, one run per back end (local key file, Vault/OpenBao, AWS KMS on
//! local-kms, Cloud KMS on drongo): KMS calls per 1 000 records and the latency of wrap
//! (`generate`) and unwrap (`decrypt`) calls, read from Kapsule's own `/metrics`
//! (`kapsule_kms_calls_total{op,outcome}`, `kapsule_kms_call_duration_seconds`), under the
//! benchmark's load generator (`bench/load.py`, confluent-kafka): records of 1 KiB produced
//! through one Kapsule with whole-value encryption, then consumed through a second Kapsule with
//! empty caches. Not a pass/fail test: it prints one table row per back end. Run, one back end
//! after the other:
//!
//! ```text
//! KAPSULE_FIGURE_RECORDS=100000 cargo test -p kapsule-integration --test integration -- \
//!     --ignored --nocapture --test-threads=1 kms_figure
//! ```

use std::time::Duration;

use rstest::rstest;

use kapsule_integration::kms_server::KmsServer;
use kapsule_integration::{run_bench_load, Kapsule, KapsuleConfig, RecordsMode, Tansu};

use crate::encryption::topic;

/// DEK limit of the run: a DEK encrypts 2 000 times (one value and one record tag per record),
/// so every 1 000 records cost one wrap on produce and one unwrap on a fresh consumer. With the
/// default limits (1e8 encryptions, 64 GiB, 1 h) a topic would use one DEK for the whole run and
/// leave no latency to measure.
const MAX_ENCRYPTIONS: u64 = 2_000;

/// One KMS operation's figures from a `/metrics` text.
#[derive(Debug, Default)]
struct OpFigures {
    calls: f64,
    failed: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Calls and latency quantiles of `op`, the quantiles interpolated within the histogram's
/// buckets as Prometheus's `histogram_quantile` does.
fn op_figures(metrics: &str, op: &str) -> OpFigures {
    let op_label = format!("op=\"{op}\"");
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut figures = OpFigures::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines().filter(|l| l.contains(&op_label)) {
        let Some(v) = value(line) else { continue };
        if line.starts_with("kapsule_kms_calls_total") {
            figures.calls += v;
            if !line.contains("outcome=\"ok\"") {
                figures.failed += v;
            }
        } else if line.starts_with("kapsule_kms_call_duration_seconds_bucket") {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(|b| b.parse::<f64>().unwrap_or(f64::INFINITY))
                .unwrap_or(f64::INFINITY);
            buckets.push((le, v));
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| -> f64 {
        let total = buckets.last().map_or(0.0, |b| b.1);
        if total == 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for &(le, cumulative) in &buckets {
            if cumulative >= rank {
                if !le.is_finite() {
                    return below.0 * 1000.0;
                }
                let within = (rank - below.1) / (cumulative - below.1).max(f64::MIN_POSITIVE);
                return (below.0 + (le - below.0) * within) * 1000.0;
            }
            below = (le, cumulative);
        }
        below.0 * 1000.0
    };
    figures.p50_ms = quantile(0.5);
    figures.p99_ms = quantile(0.99);
    figures
}

/// Starts a Kapsule in front of `tansu` using `kms`, encrypting whole values of `kmsfig-` topics.
async fn start_with(kms: &KmsServer, tansu: &Tansu) -> Kapsule {
    let policy = format!(
        "policy:\n  rules:\n    - topics: {{prefix: \"kmsfig-\"}}\n      key_id: figure-kek\n      value: whole\ndeks:\n  max_encryptions: {MAX_ENCRYPTIONS}\n"
    );
    let config = kms.kapsule_config(KapsuleConfig::new(RecordsMode::Reencode), 5_000, 3);
    Kapsule::start(&tansu.bootstrap(), config.with_yaml(&policy))
        .await
        .expect("start kapsule")
}

/// Produces `KAPSULE_FIGURE_RECORDS` (default 100 000) records of 1 KiB through one Kapsule and
/// consumes them through a fresh one, then prints the KMS figures of both as a table row.
#[rstest]
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement for the note; prints a table row per back end"]
async fn kms_figure_calls_and_latency_per_thousand_records(
    #[values("local", "vault", "aws", "gcp")] backend: &str,
) {
    let records: u64 = std::env::var("KAPSULE_FIGURE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let kms = KmsServer::start(backend).await.unwrap();
    kms.create_key("figure-kek").await.unwrap();
    let tansu = Tansu::start().await.expect("start tansu");
    let writer = start_with(&kms, &tansu).await;
    let t = topic(&tansu, "kmsfig-").await;
    let load = |mode: &str, bootstrap: String| {
        let args: Vec<String> = [
            mode,
            "--bootstrap",
            &bootstrap,
            "--topic",
            &t,
            "--count",
            &records.to_string(),
            "--size",
            "1024",
            "--timeout",
            "1200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        async move {
            run_bench_load(&args, Duration::from_secs(1_500))
                .await
                .unwrap()
                .json
        }
    };
    let produced = load("produce", writer.bootstrap()).await;
    assert_eq!(produced["records"].as_u64(), Some(records), "{produced}");
    let reader = start_with(&kms, &tansu).await;
    let consumed = load("consume", reader.bootstrap()).await;
    assert_eq!(consumed["records"].as_u64(), Some(records), "{consumed}");

    let (_, writer_metrics) = writer.admin_get("/metrics").await.unwrap();
    let (_, reader_metrics) = reader.admin_get("/metrics").await.unwrap();
    let wrap = op_figures(&writer_metrics, "generate");
    let unwrap = op_figures(&reader_metrics, "decrypt");
    assert!(
        wrap.calls > 0.0 && unwrap.calls > 0.0,
        "no KMS calls counted:\n{writer_metrics}\n{reader_metrics}"
    );
    let per_thousand = |calls: f64| calls * 1000.0 / records as f64;
    println!("\n| back end | records | wrap calls (per 1 000) | wrap p50 / p99 ms | unwrap calls (per 1 000) | unwrap p50 / p99 ms | failed calls | produce / consume MB/s |");
    println!(
        "| {backend} | {records} | {} ({:.2}) | {:.2} / {:.2} | {} ({:.2}) | {:.2} / {:.2} | {} | {:.1} / {:.1} |",
        wrap.calls,
        per_thousand(wrap.calls),
        wrap.p50_ms,
        wrap.p99_ms,
        unwrap.calls,
        per_thousand(unwrap.calls),
        unwrap.p50_ms,
        unwrap.p99_ms,
        wrap.failed + unwrap.failed,
        produced["mb_s"].as_f64().unwrap_or(f64::NAN),
        consumed["mb_s"].as_f64().unwrap_or(f64::NAN),
    );
}

#[test]
fn quantiles_interpolate_within_buckets() {
    let metrics = "kapsule_kms_calls_total{op=\"generate\",outcome=\"ok\"} 100\n\
        kapsule_kms_call_duration_seconds_bucket{le=\"0.001\",op=\"generate\"} 0\n\
        kapsule_kms_call_duration_seconds_bucket{le=\"0.002\",op=\"generate\"} 50\n\
        kapsule_kms_call_duration_seconds_bucket{le=\"0.01\",op=\"generate\"} 100\n\
        kapsule_kms_call_duration_seconds_bucket{le=\"+Inf\",op=\"generate\"} 100\n";
    let f = op_figures(metrics, "generate");
    assert_eq!(f.calls, 100.0);
    assert_eq!(f.failed, 0.0);
    assert!((f.p50_ms - 2.0).abs() < 1e-9, "{f:?}");
    assert!((f.p99_ms - 9.84).abs() < 1e-9, "{f:?}");
}
