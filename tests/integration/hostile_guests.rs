//! Hostile Python, JavaScript and C guests through Kapsule with a real client (confluent-kafka) on
//! a real tansu broker.
//!
//! One test module per language (`tests/fixtures/guests/hostile/{python,js,c}`, built by
//! `polyglot::built` when its sources changed) misbehaves as
//! each binding's config says: an infinite loop, an allocation bomb, an exception (caught by the
//! SDK, and one thrown past it; in C a refusal and an `abort()`), answers with the wrong number of
//! choices or a choice out of range (Python and JS, past their SDKs), a key id outside
//! `allowed_key_ids`, and 5000 printed lines in `init` or in `decide`. For every one the producer gets a clear
//! non-retriable POLICY_VIOLATION, nothing reaches the broker, Kapsule stays up and keeps serving
//! a well-behaved binding of the same module, and the printed storms are rate-limited in Kapsule's
//! log.

use std::time::Duration;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::{Kapsule, Tansu, TestRecord};
use serde_json::Value;

use crate::common::{assert_records_match, ck_consume, ck_produce};
use crate::encryption::{consume_report, produce_report, read_direct, start_kapsule, topic};
use crate::policies::{binding, errors_of, POLICY_VIOLATION};
use crate::polyglot::{built, policy_check, Lang};

/// Modes that must fail the produce, with the `/policies` counter that must move (if the host
/// sees the failure at all: an exception the SDK turns into a refusal is an ordinary answer).
const FAILING: [(&str, Option<&str>); 7] = [
    ("loop-decide", Some("deadlines")),
    ("alloc-decide", None),
    ("raise-decide", None),
    ("trap-decide", Some("traps")),
    ("wrong-count", Some("violations")),
    ("bad-index", Some("violations")),
    ("bad-key", Some("violations")),
];

/// Lines each printing mode writes per call.
const STORM_LINES: usize = 5000;

/// The `/policies` entry of the binding whose topic selector contains `prefix`.
async fn binding_status(kapsule: &Kapsule, prefix: &str) -> Value {
    let (_, status) = kapsule.admin_get("/policies").await.unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    status["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["topics"].as_str().unwrap().contains(prefix))
        .unwrap_or_else(|| panic!("no binding for {prefix}: {status}"))
        .clone()
}

async fn hostile_guests_are_contained(lang: Lang) {
    let module = built(lang, "hostile").await;
    // The C SDK cannot build malformed answers.
    let failing: Vec<(&str, Option<&str>)> = FAILING
        .into_iter()
        .filter(|(mode, _)| lang != Lang::C || !matches!(*mode, "wrong-count" | "bad-index"))
        .collect();
    // Well-behaved, the module passes `policy check`, which also compiles it into the module
    // cache: the bindings below then load it without compiling it once each.
    let (ok, report) = policy_check(
        &module,
        &[
            "--config",
            "ok",
            "--allowed-key-id",
            "kek-ok",
            "--call-timeout-ms",
            "5000",
        ],
    )
    .await;
    assert!(ok, "{lang:?}: {report}");
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    // Generous call time for interpreted guests on a shared 2-core machine; the loop is still cut
    // off at 3 s. 160 MiB leaves the interpreters room and bounds the allocation bomb.
    let mut policy = String::from(
        "policy:\n  watch: false\n  limits:\n    call_timeout_ms: 3000\n    init_timeout_ms: 30000\n    memory_mib: 160\n    log_messages_per_second: 20\n  bindings:\n",
    );
    for (mode, _) in &failing {
        policy += &binding(&format!("hg-{mode}-"), &module, mode, &["kek-ok"]);
    }
    for mode in ["print-init", "print-decide", "ok"] {
        policy += &binding(&format!("hg-{mode}-"), &module, mode, &["kek-ok"]);
    }
    let mut kapsule = start_kapsule(&tansu, &kms.yaml(), &policy).await;
    let b = kapsule.bootstrap();

    let mut topics = Vec::new();
    for (mode, _) in &failing {
        topics.push(topic(&tansu, &format!("hg-{mode}-")).await);
    }
    let good_topic = topic(&tansu, "hg-ok-").await;
    let good: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord::kv(format!("g{i}"), format!("GOODVAL-{i}")))
        .collect();
    let hostile_records = vec![TestRecord::kv("h", "HOSTILEVAL-secret")];
    // The hostile topics one after another, while the good binding serves.
    let hostile_runs = async {
        let mut outs = Vec::new();
        for t in &topics {
            outs.push(produce_report(&b, t, &hostile_records, &["--timeout", "30"]).await);
        }
        outs
    };
    let (outs, good_out) = tokio::join!(hostile_runs, produce_report(&b, &good_topic, &good, &[]));
    assert_eq!(
        good_out["failed"], 0,
        "{lang:?}: good binding disturbed: {good_out}"
    );

    for (((mode, counter), t), out) in failing.iter().zip(&topics).zip(&outs) {
        let errs = errors_of(out);
        assert_eq!(errs.len(), 1, "{lang:?} {mode}: {out}");
        assert_eq!(errs[0]["code"], POLICY_VIOLATION, "{lang:?} {mode}: {out}");
        assert_eq!(errs[0]["retriable"], false, "{lang:?} {mode}: {out}");
        if let Some(counter) = counter {
            let s = binding_status(&kapsule, &format!("hg-{mode}-")).await;
            assert!(
                s[*counter].as_u64().unwrap_or(0) >= 1,
                "{lang:?} {mode}: {counter} not counted: {s}"
            );
        }
        let (stored, _) =
            consume_report(&tansu.bootstrap(), t, &["--timeout", "4", "--idle", "2"]).await;
        assert!(
            stored.is_empty(),
            "{lang:?} {mode}: refused record stored: {stored:?}"
        );
    }
    kapsule
        .ensure_alive()
        .await
        .expect("Kapsule survives every hostile guest");

    // The printing bindings serve (records encrypted, read back in clear)...
    for mode in ["print-init", "print-decide"] {
        let t = topic(&tansu, &format!("hg-{mode}-")).await;
        let records: Vec<TestRecord> = (0..3)
            .map(|i| TestRecord::kv(format!("p{i}"), format!("PRINTVAL-{i}")))
            .collect();
        ck_produce(&b, &t, &records, &[]).await;
        assert_no_plaintext(&read_direct(&tansu, &t, 3).await, &[b"PRINTVAL-".to_vec()]);
        assert_records_match(&records, &ck_consume(&b, &t, 3, &[]).await);
        // ...and their storms are rate-limited: most lines are dropped and counted.
        let s = binding_status(&kapsule, &format!("hg-{mode}-")).await;
        assert!(
            s["log_dropped"].as_u64().unwrap_or(0) >= (STORM_LINES as u64) / 2,
            "{lang:?} {mode}: storm not rate-limited: {s}"
        );
    }
    let logs = kapsule.logs();
    let printed = logs.matches("hostile print storm").count();
    assert!(printed >= 1, "{lang:?}: printed lines reach the policy log");
    assert!(
        printed < STORM_LINES / 10,
        "{lang:?}: {printed} storm lines in Kapsule's log"
    );
    assert!(
        !logs.contains("HOSTILEVAL-secret"),
        "{lang:?}: record contents in Kapsule's log"
    );

    // The good binding still encrypts and reads back.
    let stored = read_direct(&tansu, &good_topic, good.len()).await;
    assert_no_plaintext(&stored, &[b"GOODVAL-".to_vec()]);
    assert_records_match(&good, &ck_consume(&b, &good_topic, good.len(), &[]).await);
    let more = vec![TestRecord::kv("after", "GOODVAL-after")];
    tokio::time::timeout(
        Duration::from_secs(120),
        ck_produce(&b, &good_topic, &more, &[]),
    )
    .await
    .expect("the good binding still answers");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_python_guests_are_contained() {
    hostile_guests_are_contained(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_js_guests_are_contained() {
    hostile_guests_are_contained(Lang::Js).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_c_guests_are_contained() {
    hostile_guests_are_contained(Lang::C).await;
}
