//! 50 concurrent clients, each with its own producer and consumer connections through Kapsule.

use rstest::rstest;

use kapsule_integration::{run_python, unique_name, RecordsMode};

use crate::common::{args, Rig};

#[rstest]
#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_clients_each_read_back_their_records(
    #[values(RecordsMode::Passthrough, RecordsMode::Reencode)] mode: RecordsMode,
) {
    let mut rig = Rig::start(mode).await;
    let topic = rig.topic("concurrent", 3).await;
    let tag = unique_name("conc");
    let a = args(&[
        "--bootstrap",
        &rig.bootstrap(),
        "--topic",
        &topic,
        "--clients",
        "50",
        "--per-client",
        "20",
        "--tag",
        &tag,
        "--timeout",
        "150",
    ]);
    let out = run_python("ck_concurrent.py", &a, std::time::Duration::from_secs(240))
        .await
        .expect("concurrent clients");
    assert_eq!(out.json["failures"], serde_json::json!([]), "{}", out.json);
    assert_eq!(out.json["ok"], 50, "{}", out.json);
    rig.kapsule
        .ensure_alive()
        .await
        .expect("kapsule alive after 50 clients");
}
