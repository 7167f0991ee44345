//! Shared setup for the integration tests.

use std::time::Duration;

use kapsule_integration::records::{write_records_file, ConsumedRecord};
use kapsule_integration::{
    run_python, unique_name, Broker, Kapsule, KapsuleConfig, RecordsMode, TestRecord,
};

/// Default time a client script may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A broker and a Kapsule in front of it (Kapsule stopped on drop; a tansu broker too).
pub struct Rig {
    pub kapsule: Kapsule,
    pub broker: Broker,
}

impl Rig {
    /// Starts Kapsule with `records: <mode>` in front of the default broker (the shared Apache
    /// Kafka node; tansu with `KAPSULE_TEST_BROKER=tansu`).
    pub async fn start(mode: RecordsMode) -> Rig {
        Rig::start_on(
            Broker::start_default().await.expect("start the broker"),
            mode,
        )
        .await
    }

    /// Starts Kapsule with `records: <mode>` in front of a tansu of this test's own (tests that
    /// stop the broker, or are about tansu).
    pub async fn start_on_tansu(mode: RecordsMode) -> Rig {
        Rig::start_on(Broker::tansu().await.expect("start tansu"), mode).await
    }

    async fn start_on(broker: Broker, mode: RecordsMode) -> Rig {
        let kapsule = Kapsule::start(&broker.bootstrap(), KapsuleConfig::new(mode))
            .await
            .expect("start kapsule");
        Rig { kapsule, broker }
    }

    /// Address clients use: Kapsule's listener (the broker with `KAPSULE_RIG_DIRECT=1`).
    pub fn bootstrap(&self) -> String {
        self.kapsule.bootstrap()
    }

    /// Creates a uniquely named topic on the broker.
    pub async fn topic(&self, prefix: &str, partitions: u32) -> String {
        let name = unique_name(prefix);
        self.broker
            .create_topic(&name, partitions)
            .await
            .expect("create topic");
        name
    }

    /// [`Rig::topic`] with topic configs (Apache Kafka only; see [`Broker::create_topic_with`]).
    pub async fn topic_with(
        &self,
        prefix: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> String {
        let name = unique_name(prefix);
        self.broker
            .create_topic_with(&name, partitions, configs)
            .await
            .expect("create topic");
        name
    }
}

/// `["a", "b"]` as owned strings, for script arguments.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Produces `records` with confluent-kafka (`ck_produce.py`) plus `extra` arguments.
pub async fn ck_produce(
    bootstrap: &str,
    topic: &str,
    records: &[TestRecord],
    extra: &[&str],
) -> serde_json::Value {
    let file = write_records_file(records).expect("write records");
    let mut a = args(&["--bootstrap", bootstrap, "--topic", topic, "--input"]);
    a.push(file.path().display().to_string());
    a.extend(args(extra));
    let out = run_python("ck_produce.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("confluent-kafka produce");
    assert_eq!(out.json["produced"], records.len(), "{}", out.json);
    out.json
}

/// Consumes `count` records with confluent-kafka (`ck_consume.py`, new unique group) plus `extra`.
pub async fn ck_consume(
    bootstrap: &str,
    topic: &str,
    count: usize,
    extra: &[&str],
) -> Vec<ConsumedRecord> {
    let group = unique_name("ck-group");
    let mut a = args(&[
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        &group,
        "--timeout",
        "60",
    ]);
    a.extend(["--count".to_string(), count.to_string()]);
    a.extend(args(extra));
    let out = run_python("ck_consume.py", &a, CLIENT_TIMEOUT)
        .await
        .expect("confluent-kafka consume");
    ConsumedRecord::list_from_output(&out.json).expect("parse consumed records")
}

pub use kapsule_integration::records::assert_records_match;

/// The strings of the JSON array `field` of a client's output (`null` items as `"<null>"`).
pub fn json_strings(v: &serde_json::Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or("<null>").to_owned())
        .collect()
}

/// Every acknowledged value was read exactly once, and nothing else was read.
pub fn assert_read_exactly_once(acked: &[String], read: Vec<String>) {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for v in read {
        *seen.entry(v).or_default() += 1;
    }
    let missing: Vec<&String> = acked.iter().filter(|v| !seen.contains_key(*v)).collect();
    let duplicated: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records never read, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(duplicated.is_empty(), "read more than once: {duplicated:?}");
    assert_eq!(
        seen.len(),
        acked.len(),
        "nothing beyond what was acknowledged"
    );
}

/// Every acknowledged value is among what a consumer group read (at least once: a rebalance
/// may replay uncommitted records).
pub fn assert_group_read_all(acked: &[String], read: Vec<String>) {
    let got: std::collections::HashSet<String> = read.into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|v| !got.contains(*v)).collect();
    assert!(
        lost.is_empty(),
        "the consumer group missed {} records, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Runs `kapsule keys <args> -c FILE` as an operator would, FILE holding `config` (its `kms:`
/// section; listener addresses unused) and the process given `config`'s environment; returns
/// the exit status and what it printed (stdout, stderr).
pub fn kapsule_keys(config: &KapsuleConfig, args: &[&str]) -> (bool, String, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        config.to_yaml("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"),
    )
    .unwrap();
    let (command, rest) = args.split_first().expect("a keys subcommand");
    let out = std::process::Command::new(kapsule_integration::kapsule::kapsule_bin().unwrap())
        .args(["keys", command, "-c"])
        .arg(file.path())
        .args(rest)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of `kapsule_fetch_read_ahead_total{outcome="..."}` on a metrics page.
pub(crate) fn read_ahead_count(metrics: &str, outcome: &str) -> u64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("kapsule_fetch_read_ahead_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no read-ahead {outcome} count in\n{metrics}"))
}

/// Asserts that `consumed` delivered each of `partitions` partitions in increasing offset order
/// (so no record twice); `who` names the consumer in the message.
pub(crate) fn assert_in_offset_order(consumed: &[ConsumedRecord], partitions: i32, who: &str) {
    for partition in 0..partitions {
        let offsets: Vec<i64> = consumed
            .iter()
            .filter(|c| c.record.partition == Some(partition))
            .map(|c| c.offset)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{who}: partition {partition} delivered out of order: {offsets:?}"
        );
    }
}

/// Asserts that `kapsule` answered most of a consumer's fetches with read-aheads: at least 20
/// served, and never more than it sent.
pub(crate) async fn assert_fetches_read_ahead(kapsule: &Kapsule, who: &str) {
    let (_, metrics) = kapsule.admin_get("/metrics").await.unwrap();
    let (sent, served) = (
        read_ahead_count(&metrics, "sent"),
        read_ahead_count(&metrics, "served"),
    );
    assert!(
        served >= 20 && served <= sent,
        "{who}: expected most fetches answered ahead: sent {sent}, served {served}"
    );
}
