//! kcat (Debian's build, librdkafka 2.0.2).
//!
//! Known limit: against tansu 0.6.0 directly, this kcat fails the ApiVersions handshake ("ApiVersionRequest
//! failed: Local: Read underflow"). Through Kapsule it works (Kapsule answers ApiVersions with the
//! intersection it supports). The test is therefore skipped with `KAPSULE_RIG_DIRECT=1`, and when
//! kcat is not installed.

use std::process::Stdio;
use std::time::Duration;

use rstest::rstest;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use kapsule_integration::RecordsMode;

use crate::common::Rig;

fn kcat() -> Option<&'static str> {
    ["kcat", "kafkacat"].into_iter().find(|bin| {
        std::process::Command::new(bin)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

async fn run(bin: &str, a: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(bin)
        .args(a)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcat");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kcat finished within 60 s")
        .expect("kcat output")
}

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn kcat_produces_and_consumes(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let Some(bin) = kcat() else {
        eprintln!("SKIPPED: kcat is not installed (scripts/install-deps.sh installs it)");
        return;
    };
    let rig = Rig::start(mode).await;
    if rig.kapsule.is_direct() {
        eprintln!("SKIPPED: Debian's kcat (librdkafka 2.0.2) fails ApiVersions against tansu 0.6.0 directly");
        return;
    }
    let topic = rig.topic("kcat", 1).await;
    let bootstrap = rig.bootstrap();
    let lines = b"k1\tone\nk2\ttwo\nk3\tthree\n";
    let out = run(
        bin,
        &["-b", &bootstrap, "-t", &topic, "-P", "-K", "\t"],
        Some(lines),
    )
    .await;
    assert!(
        out.status.success(),
        "kcat -P failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        bin,
        &[
            "-b",
            &bootstrap,
            "-t",
            &topic,
            "-C",
            "-o",
            "beginning",
            "-c",
            "3",
            "-e",
            "-f",
            "%k=%s\\n",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "kcat -C failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "k1=one\nk2=two\nk3=three\n"
    );
}
