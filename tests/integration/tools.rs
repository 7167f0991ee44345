//! `kapsule reencrypt` and `kapsule inspect` against tansu + Kapsule with a local KMS: records
//! produced under one key are copied under another, byte-exact, with an exact offset mapping and a
//! checkpoint that makes a rerun a no-op; `inspect` reads the broker directly and shows each
//! topic's KEK.

use std::collections::BTreeSet;
use std::process::Command;

use kapsule_integration::kapsule::kapsule_bin;
use kapsule_integration::{unique_name, Kapsule, KapsuleConfig, RecordsMode, Tansu, TestRecord};

use crate::common::{assert_records_match, ck_consume, ck_produce};

/// Runs the kapsule binary with `args`; returns stdout lines parsed as JSON, panics on failure.
fn kapsule_tool(args: &[&str]) -> Vec<serde_json::Value> {
    let bin = kapsule_bin().expect("kapsule binary");
    let out = Command::new(&bin).args(args).output().expect("run kapsule");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kapsule {args:?} failed with {}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn read_mapping(path: &std::path::Path) -> Vec<(i64, i64, i64)> {
    std::fs::read_to_string(path)
        .expect("mapping file")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["partition"].as_i64().unwrap(),
                v["from_offset"].as_i64().unwrap(),
                v["to_offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reencrypt_copies_under_the_new_key_and_inspect_shows_it() {
    if kapsule_integration::kapsule::direct_mode() {
        eprintln!("skipped: KAPSULE_RIG_DIRECT=1 has no proxy to re-encrypt through");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.key");
    std::fs::write(&master, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    let src = unique_name("reenc-src");
    let dst = unique_name("reenc-dst");
    let keys = dir.path().join("keys.json");
    let yaml = [
        "kms:".to_string(),
        "  type: local".into(),
        format!("  key_file: \"{}\"", keys.display()),
        format!("  master_key_file: \"{}\"", master.display()),
        "  auto_create_keys: true".into(),
        "policy:".into(),
        "  unmatched_topics: pass".into(),
        "  rules:".into(),
        format!("    - topics: {{exact: \"{src}\"}}"),
        "      key_id: kek-src".into(),
        "      value: whole".into(),
        format!("    - topics: {{exact: \"{dst}\"}}"),
        "      key_id: kek-dst".into(),
        "      value: whole".into(),
        "      record_key: true".into(),
        "      headers: [dup]".into(),
    ]
    .join("\n");
    let tansu = Tansu::start().await.expect("start tansu");
    let kapsule = Kapsule::start(
        &tansu.bootstrap(),
        KapsuleConfig::new(RecordsMode::Passthrough).with_yaml(&yaml),
    )
    .await
    .expect("start kapsule");
    tansu.create_topic(&src, 2).await.expect("create src");
    tansu.create_topic(&dst, 2).await.expect("create dst");

    let records = TestRecord::varied("reenc", 45);
    ck_produce(&kapsule.bootstrap(), &src, &records, &[]).await;

    let mapping = dir.path().join("mapping.jsonl");
    let checkpoint = dir.path().join("checkpoint.json");
    let bootstrap = kapsule.bootstrap();
    let m = mapping.display().to_string();
    let c = checkpoint.display().to_string();
    let args = [
        "reencrypt",
        "--bootstrap",
        &bootstrap,
        "--from",
        &src,
        "--to",
        &dst,
        "--mapping",
        &m,
        "--checkpoint",
        &c,
        "--batch-records",
        "7",
    ];
    let t0 = std::time::Instant::now();
    let out = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || kapsule_tool(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    eprintln!(
        "reencrypt of {} records took {:?}",
        records.len(),
        t0.elapsed()
    );
    let summary = &out.last().expect("summary line")["summary"];
    assert_eq!(summary["copied"], 45, "{summary}");
    assert_eq!(summary["resumed"], false);

    // Exact mapping: every source offset once, destination offsets dense per partition.
    let map = read_mapping(&mapping);
    assert_eq!(map.len(), 45);
    for p in 0..2 {
        let from: Vec<i64> = map.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
        let to: Vec<i64> = map.iter().filter(|m| m.0 == p).map(|m| m.2).collect();
        let dense: Vec<i64> = (0..from.len() as i64).collect();
        assert_eq!(from, dense, "partition {p} source offsets");
        assert_eq!(to, dense, "partition {p} destination offsets");
    }

    // A rerun with the same checkpoint copies nothing.
    let again = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || kapsule_tool(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    let summary = &again.last().unwrap()["summary"];
    assert_eq!(summary["copied"], 0, "{summary}");
    assert_eq!(summary["resumed"], true);
    assert_eq!(read_mapping(&mapping).len(), 45);

    // Consumed through Kapsule, dst holds exactly what was produced to src, at mapped offsets.
    let consumed = ck_consume(&kapsule.bootstrap(), &dst, records.len(), &[]).await;
    assert_records_match(&records, &consumed);
    let got: BTreeSet<(i64, i64)> = consumed
        .iter()
        .map(|c| (i64::from(c.record.partition.unwrap()), c.offset))
        .collect();
    let mapped: BTreeSet<(i64, i64)> = map.iter().map(|m| (m.0, m.2)).collect();
    assert_eq!(got, mapped);

    // inspect reads the broker directly: dst records carry kek-dst descriptors, src kek-src.
    let tb = tansu.bootstrap();
    let dst_desc = tokio::task::spawn_blocking({
        let (tb, dst) = (tb.clone(), dst.clone());
        move || {
            kapsule_tool(&[
                "inspect",
                "--bootstrap",
                &tb,
                "--topic",
                &dst,
                "--limit",
                "100",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(dst_desc.len(), 45);
    for r in &dst_desc {
        assert_eq!(r["status"], "encrypted", "{r}");
        assert_eq!(r["descriptor"]["kek_id"], "kek-dst", "{r}");
        assert_eq!(
            r["descriptor"]["encrypted_headers"],
            serde_json::json!(["dup", "dup"]),
            "{r}"
        );
        let text = r.to_string();
        assert!(
            !text.contains("second-"),
            "plaintext in inspect output: {text}"
        );
    }
    assert!(dst_desc
        .iter()
        .any(|r| r["descriptor"]["key_encrypted"] == true));
    let src_desc = tokio::task::spawn_blocking(move || {
        kapsule_tool(&[
            "inspect",
            "--bootstrap",
            &tb,
            "--topic",
            &src,
            "--partition",
            "0",
            "--limit",
            "3",
        ])
    })
    .await
    .unwrap();
    assert!(!src_desc.is_empty() && src_desc.len() <= 3);
    for r in &src_desc {
        assert_eq!(r["descriptor"]["kek_id"], "kek-src", "{r}");
        assert_eq!(r["partition"], 0);
    }
}
