//! [`KafkaCluster`]: real Apache Kafka 4.x KRaft nodes (combined broker + controller), on free
//! ports, in temporary directories; one shared single node per test process, or a cluster of its
//! own for tests that need isolation (node failover, broker options).
//!
//! The jars come from `scripts/install-kafka.sh` (run once per test process; it is idempotent and
//! prints the libs directory), or from `KAPSULE_KAFKA_LIBS`. Each node is formatted with
//! `kafka.tools.StorageTool format` (SCRAM users added at format time) and started with
//! `kafka.Kafka server.properties` on `java` (`KAPSULE_KAFKA_JAVA` overrides; Java 17 is enough).
//!
//! Every node offers the same listeners, each advertised as `127.0.0.1:<its port>`:
//! - `PLAINTEXT` ([`Listener::Plaintext`]): also the inter-broker listener;
//! - `SASL_PLAINTEXT` ([`Listener::Sasl`]): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER
//!   (Kafka's unsecured JWS validator: any unsigned token whose `sub` names the principal), with the
//!   users of [`KafkaOptions::users`] for every mechanism;
//! - `SSL` ([`Listener::Ssl`]): TLS with client authentication requested, not required;
//! - `MTLS` ([`Listener::Mtls`]): TLS with client certificates required. The principal of a TLS
//!   client is the CN of its certificate (`ssl.principal.mapping.rules`).
//!
//! Server certificates are issued by [`KafkaCluster::pki`] (the `tls.rs` helpers, PEM keystores);
//! issue client certificates from the same PKI.
//!
//! JVMs are not child processes Rust can clean up at exit (statics are never dropped), so every
//! node runs under a small `sh` watchdog that kills the JVM and removes the node's directory once
//! the test process is gone, also after a panic with `panic = "abort"` or a SIGKILL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::ports::free_port;
use crate::probe::{self, RawConnection};
use crate::process::ProcessGuard;
use crate::tls::{Issued, KeyKind, Pki};
use crate::wait;

/// How long a node may take from JVM start to answering Metadata with every broker.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long `StorageTool format` may take.
const FORMAT_TIMEOUT: Duration = Duration::from_secs(60);

/// JVM options for the broker unless `KAPSULE_KAFKA_JVM_OPTS` is set: a small heap and one GC
/// thread, since test machines run several nodes on two cores.
const DEFAULT_JVM_OPTS: &str =
    "-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true";

/// The watchdog every JVM runs under: `sh -c WATCHDOG watchdog <test pid> <dir> java ...`.
///
/// It starts the command, exits with its status when it ends, and when the test process (the
/// first argument) is gone it SIGKILLs the command and removes the directory (second argument).
/// A SIGTERM to the process group reaches the JVM directly; the trap only waits for it, so a
/// graceful stop ([`KafkaCluster::stop_node`]) lets the broker finish its controlled shutdown.
pub(crate) const WATCHDOG: &str = r#"parent=$1; cleanup=$2; shift 2
"$@" &
child=$!
trap 'wait "$child"; exit $?' TERM
while kill -0 "$parent" 2>/dev/null; do
  if ! kill -0 "$child" 2>/dev/null; then wait "$child"; exit $?; fi
  sleep 1
done
kill -KILL "$child" 2>/dev/null
rm -rf "$cleanup"
"#;

/// log4j2 configuration for the broker: warnings and the start/stop lines, on stdout (which the
/// [`ProcessGuard`] log file captures).
const LOG4J2: &str = "status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
";

/// A listener every node offers; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// `PLAINTEXT`: no authentication (principal `User:ANONYMOUS`).
    Plaintext,
    /// `SASL_PLAINTEXT`: PLAIN, SCRAM-SHA-256/512, OAUTHBEARER (unsecured tokens).
    Sasl,
    /// `SSL`: TLS, client certificate requested but optional.
    Ssl,
    /// `MTLS`: TLS with a client certificate required.
    Mtls,
}

impl Listener {
    /// Every listener, in the order of the `listeners` property.
    pub const ALL: [Listener; 4] = [
        Listener::Plaintext,
        Listener::Sasl,
        Listener::Ssl,
        Listener::Mtls,
    ];

    /// The listener name in the broker config.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Plaintext => "PLAINTEXT",
            Listener::Sasl => "SASL_PLAINTEXT",
            Listener::Ssl => "SSL",
            Listener::Mtls => "MTLS",
        }
    }

    /// The client's `security.protocol` for this listener.
    pub fn security_protocol(self) -> &'static str {
        match self {
            Listener::Plaintext => "PLAINTEXT",
            Listener::Sasl => "SASL_PLAINTEXT",
            Listener::Ssl | Listener::Mtls => "SSL",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A SASL user known to every mechanism of the SASL listener: PLAIN (JAAS config), SCRAM-SHA-256
/// and SCRAM-SHA-512 (credentials written at format time). OAUTHBEARER needs no password: an
/// unsecured token with `sub` = the name is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUser {
    /// User name, also the principal name (`User:<name>`).
    pub name: String,
    /// Password for PLAIN and SCRAM.
    pub password: String,
}

impl KafkaUser {
    /// A user `name` with password `<name>-secret`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            password: format!("{name}-secret"),
        }
    }
}

/// How a [`KafkaCluster`] is configured. Start from [`KafkaOptions::single`] or
/// [`KafkaOptions::cluster`].
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Number of combined broker + controller nodes (node ids 1..=n).
    pub nodes: usize,
    /// SASL users; by default `admin`, `alice` and `bob` (see [`KafkaUser::new`]).
    pub users: Vec<KafkaUser>,
    /// `Some(principals)` switches on `StandardAuthorizer` with these super users (e.g.
    /// `User:admin`). `User:ANONYMOUS` is always added: it is the controller's and inter-broker
    /// principal on the plaintext listeners.
    pub super_users: Option<Vec<String>>,
    /// `log.segment.bytes` (Kafka 4 refuses less than 1 MiB; use the topic's `segment.ms` to roll
    /// segments faster for compaction tests).
    pub segment_bytes: Option<u64>,
    /// Further `server.properties` lines, applied last (they override the rig's defaults).
    pub properties: Vec<(String, String)>,
    /// Feature levels set at format time (`StorageTool format --feature name=level`), e.g.
    /// `transaction.version` 1; unset features take the release's defaults (4.4: version 2).
    pub features: Vec<(String, u16)>,
}

impl KafkaOptions {
    /// One combined node, replication factor 1.
    pub fn single() -> Self {
        Self::cluster(1)
    }

    /// `nodes` combined nodes; internal topics and new topics replicated to all of them, with
    /// `min.insync.replicas` 2 so a cluster of 3 keeps accepting `acks=all` with one node down.
    pub fn cluster(nodes: usize) -> Self {
        Self {
            nodes,
            users: ["admin", "alice", "bob"].map(KafkaUser::new).to_vec(),
            super_users: None,
            segment_bytes: None,
            properties: Vec::new(),
            features: Vec::new(),
        }
    }

    /// Switches on `StandardAuthorizer` with `super_users` (principals like `User:admin`).
    pub fn with_authorizer(mut self, super_users: &[&str]) -> Self {
        self.super_users = Some(super_users.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Formats the nodes with feature `name` at `level` (e.g. `transaction.version`, 1).
    pub fn with_feature(mut self, name: &str, level: u16) -> Self {
        self.features.push((name.to_owned(), level));
        self
    }

    /// Adds a `server.properties` line (applied after the rig's defaults).
    pub fn with_property(mut self, key: &str, value: &str) -> Self {
        self.properties.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// Ports of one node: one per [`Listener`] plus the controller listener.
#[derive(Debug, Clone, Copy)]
struct NodePorts {
    listeners: [u16; 4],
    controller: u16,
}

struct KafkaNode {
    id: i32,
    ports: NodePorts,
    dir: PathBuf,
    process: Option<ProcessGuard>,
}

/// Real Apache Kafka KRaft nodes started by a test; every JVM is killed when this is dropped (or,
/// for [`KafkaCluster::shared`], when the test process exits).
pub struct KafkaCluster {
    cluster_id: String,
    nodes: Vec<KafkaNode>,
    options: KafkaOptions,
    pki: Pki,
    server_cert: Issued,
    java: PathBuf,
    libs: PathBuf,
    // Last field: removed after the nodes' guards have killed their JVMs.
    dir: tempfile::TempDir,
}

impl fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("cluster_id", &self.cluster_id)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| (n.id, n.ports.listeners[0], n.process.is_some()))
                    .collect::<Vec<_>>(),
            )
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The Kafka libs directory: `KAPSULE_KAFKA_LIBS`, else what `scripts/install-kafka.sh` prints
/// (it installs Kafka on first use, idempotently). Resolved once per test process.
pub fn kafka_libs() -> Result<PathBuf> {
    static LIBS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIBS.get_or_init(|| locate_libs().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn locate_libs() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KAPSULE_KAFKA_LIBS") {
        let dir = PathBuf::from(dir);
        ensure!(
            dir.join(format!("kafka-clients-{}.jar", kafka_version()?))
                .is_file(),
            "KAPSULE_KAFKA_LIBS={} holds no kafka-clients jar of the version in deps/kafka/pom.xml",
            dir.display()
        );
        return Ok(dir);
    }
    let script = workspace_root().join("scripts/install-kafka.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed with {}: {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        dir.is_dir(),
        "{} printed {}, which is not a directory",
        script.display(),
        dir.display()
    );
    Ok(dir)
}

/// The Kafka version pinned in `deps/kafka/pom.xml`.
pub fn kafka_version() -> Result<String> {
    let pom = workspace_root().join("deps/kafka/pom.xml");
    let text =
        std::fs::read_to_string(&pom).with_context(|| format!("reading {}", pom.display()))?;
    let start = text
        .find("<kafka.version>")
        .context("deps/kafka/pom.xml has no <kafka.version>")?
        + "<kafka.version>".len();
    let end = text[start..]
        .find('<')
        .context("unterminated <kafka.version>")?;
    Ok(text[start..start + end].trim().to_owned())
}

/// The repository root (parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_owned()
}

/// The `java` used for brokers and the Java client: `KAPSULE_KAFKA_JAVA`, else `java` on PATH.
pub fn java() -> PathBuf {
    std::env::var_os("KAPSULE_KAFKA_JAVA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// `libs/*`, the classpath of every Kafka jar.
pub fn kafka_classpath(libs: &Path) -> String {
    format!("{}/*", libs.display())
}

/// A fresh Kafka cluster id: 16 random bytes, base64url without padding, not starting with `-`
/// (what `StorageTool random-uuid` prints).
fn random_cluster_id() -> String {
    use base64::Engine as _;
    use std::io::Read as _;
    loop {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("reading /dev/urandom");
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

impl KafkaCluster {
    /// The single-node cluster shared by every test of this process that needs no isolation
    /// (tests isolate by unique topic and group names). Started on first use; its JVM lives until
    /// the test process exits. Default [`KafkaOptions::single`] options.
    pub async fn shared() -> Result<&'static KafkaCluster> {
        static SHARED: tokio::sync::OnceCell<KafkaCluster> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| KafkaCluster::start(KafkaOptions::single()))
            .await
            .context("starting the shared Apache Kafka node")
    }

    /// Formats and starts `options.nodes` nodes, and waits until every node answers Metadata
    /// listing every broker.
    pub async fn start(options: KafkaOptions) -> Result<Self> {
        ensure!(
            (1..=9).contains(&options.nodes),
            "a rig cluster has 1 to 9 nodes"
        );
        let libs = kafka_libs()?;
        let java = java();
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-kafka-")
            .tempdir()
            .context("creating the cluster directory")?;
        let pki = Pki::new("kafka")?;
        let server_cert = pki.issue("kafka-broker", KeyKind::EcPkcs8, false, false)?;
        let nodes = (1..=options.nodes as i32)
            .map(|id| KafkaNode {
                id,
                ports: NodePorts {
                    listeners: [free_port(), free_port(), free_port(), free_port()],
                    controller: free_port(),
                },
                dir: dir.path().join(format!("node-{id}")),
                process: None,
            })
            .collect();
        let mut cluster = Self {
            cluster_id: random_cluster_id(),
            nodes,
            options,
            pki,
            server_cert,
            java,
            libs,
            dir,
        };
        cluster.write_configs()?;
        cluster.format_all().await?;
        for i in 0..cluster.nodes.len() {
            cluster.spawn_node(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_node_ready(i).await?;
        }
        Ok(cluster)
    }

    fn write_configs(&self) -> Result<()> {
        std::fs::write(self.dir.path().join("log4j2.properties"), LOG4J2)?;
        // Kafka's PEM keystore: the private key (PKCS#8, unencrypted) and the certificate chain.
        let mut keystore = std::fs::read(&self.server_cert.key)?;
        keystore.extend(std::fs::read(&self.server_cert.cert)?);
        std::fs::write(self.keystore_path(), keystore)?;
        for node in &self.nodes {
            std::fs::create_dir_all(node.dir.join("data"))?;
            std::fs::write(node.dir.join("server.properties"), self.properties(node))
                .with_context(|| format!("writing node {}'s server.properties", node.id))?;
        }
        Ok(())
    }

    fn keystore_path(&self) -> PathBuf {
        self.dir.path().join("broker-keystore.pem")
    }

    fn properties(&self, node: &KafkaNode) -> String {
        let n = self.nodes.len();
        let voters = self
            .nodes
            .iter()
            .map(|v| format!("{}@127.0.0.1:{}", v.id, v.ports.controller))
            .collect::<Vec<_>>()
            .join(",");
        let listeners = Listener::ALL
            .iter()
            .map(|l| {
                format!(
                    "{}://127.0.0.1:{}",
                    l.name(),
                    node.ports.listeners[l.index()]
                )
            })
            .collect::<Vec<_>>();
        let protocol_map = Listener::ALL
            .iter()
            .map(|l| format!("{}:{}", l.name(), l.security_protocol()))
            .chain(["CONTROLLER:PLAINTEXT".to_owned()])
            .collect::<Vec<_>>()
            .join(",");
        let min_isr = n.min(2);
        let plain_users: String = self
            .options
            .users
            .iter()
            .map(|u| format!(" user_{}=\"{}\"", u.name, u.password))
            .collect();
        let mut p: Vec<(String, String)> = vec![
            ("process.roles".into(), "broker,controller".into()),
            ("node.id".into(), node.id.to_string()),
            ("controller.quorum.voters".into(), voters),
            (
                "listeners".into(),
                format!(
                    "{},CONTROLLER://127.0.0.1:{}",
                    listeners.join(","),
                    node.ports.controller
                ),
            ),
            ("advertised.listeners".into(), listeners.join(",")),
            ("listener.security.protocol.map".into(), protocol_map),
            ("inter.broker.listener.name".into(), "PLAINTEXT".into()),
            ("controller.listener.names".into(), "CONTROLLER".into()),
            (
                "log.dirs".into(),
                node.dir.join("data").display().to_string(),
            ),
            ("num.partitions".into(), "1".into()),
            ("default.replication.factor".into(), n.to_string()),
            ("min.insync.replicas".into(), min_isr.to_string()),
            ("offsets.topic.replication.factor".into(), n.to_string()),
            ("offsets.topic.num.partitions".into(), "4".into()),
            (
                "transaction.state.log.replication.factor".into(),
                n.to_string(),
            ),
            ("transaction.state.log.min.isr".into(), min_isr.to_string()),
            ("transaction.state.log.num.partitions".into(), "4".into()),
            ("share.coordinator.state.topic.replication.factor".into(), n.to_string()),
            ("share.coordinator.state.topic.min.isr".into(), min_isr.to_string()),
            ("group.initial.rebalance.delay.ms".into(), "0".into()),
            ("num.network.threads".into(), "2".into()),
            ("num.io.threads".into(), "2".into()),
            ("num.recovery.threads.per.data.dir".into(), "1".into()),
            ("log.cleaner.backoff.ms".into(), "1000".into()),
            // Test records carry fixed timestamps (2023) so round trips compare byte for byte;
            // time retention would delete them at the broker's next retention check (every
            // 5 min), and a consumer that resets to `earliest` afterwards reads nothing.
            ("log.retention.ms".into(), "-1".into()),
            // SASL listener: every mechanism, PLAIN users inline, SCRAM users from format time.
            (
                "sasl.enabled.mechanisms".into(),
                "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER".into(),
            ),
            (
                "listener.name.sasl_plaintext.plain.sasl.jaas.config".into(),
                format!(
                    "org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};"
                ),
            ),
            (
                "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config".into(),
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            (
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config".into(),
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            (
                "listener.name.sasl_plaintext.oauthbearer.sasl.jaas.config".into(),
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"broker\";".into(),
            ),
            (
                "listener.name.sasl_plaintext.oauthbearer.sasl.server.callback.handler.class".into(),
                "org.apache.kafka.common.security.oauthbearer.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler".into(),
            ),
            // TLS listeners: PEM keystore and truststore from the rig's PKI.
            ("ssl.keystore.type".into(), "PEM".into()),
            (
                "ssl.keystore.location".into(),
                self.keystore_path().display().to_string(),
            ),
            ("ssl.truststore.type".into(), "PEM".into()),
            (
                "ssl.truststore.location".into(),
                self.pki.ca_cert().display().to_string(),
            ),
            ("listener.name.ssl.ssl.client.auth".into(), "requested".into()),
            ("listener.name.mtls.ssl.client.auth".into(), "required".into()),
            (
                "ssl.principal.mapping.rules".into(),
                "RULE:^CN=([^,]*)$/$1/,DEFAULT".into(),
            ),
        ];
        if let Some(bytes) = self.options.segment_bytes {
            p.push(("log.segment.bytes".into(), bytes.to_string()));
        }
        if let Some(supers) = &self.options.super_users {
            p.push((
                "authorizer.class.name".into(),
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
            ));
            let mut all = vec!["User:ANONYMOUS".to_owned()];
            all.extend(supers.iter().cloned());
            p.push(("super.users".into(), all.join(";")));
        }
        p.extend(self.options.properties.iter().cloned());
        let mut text = String::from("# generated by kapsule-integration (tests/src/kafka.rs)\n");
        for (k, v) in p {
            text.push_str(&format!("{k}={v}\n"));
        }
        text
    }

    async fn format_all(&self) -> Result<()> {
        let mut runs = Vec::new();
        for node in &self.nodes {
            let mut cmd = tokio::process::Command::new(&self.java);
            cmd.arg("-cp")
                .arg(kafka_classpath(&self.libs))
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    self.dir.path().join("log4j2.properties").display()
                ))
                .args([
                    "-Xshare:auto",
                    "-XX:TieredStopAtLevel=1",
                    "-XX:+UseSerialGC",
                ])
                .arg("kafka.tools.StorageTool")
                .args(["format", "--cluster-id", &self.cluster_id, "--config"])
                .arg(node.dir.join("server.properties"));
            for user in &self.options.users {
                for mech in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                    cmd.arg("--add-scram").arg(format!(
                        "{mech}=[name={},password={}]",
                        user.name, user.password
                    ));
                }
            }
            for (name, level) in &self.options.features {
                cmd.arg("--feature").arg(format!("{name}={level}"));
            }
            cmd.kill_on_drop(true);
            let id = node.id;
            runs.push(async move {
                let out = tokio::time::timeout(FORMAT_TIMEOUT, cmd.output())
                    .await
                    .with_context(|| {
                        format!("StorageTool format of node {id} took over {FORMAT_TIMEOUT:?}")
                    })?
                    .with_context(|| format!("running StorageTool format for node {id}"))?;
                ensure!(
                    out.status.success(),
                    "StorageTool format of node {id} failed with {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            });
        }
        for run in runs {
            run.await?;
        }
        Ok(())
    }

    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let jvm_opts =
            std::env::var("KAPSULE_KAFKA_JVM_OPTS").unwrap_or_else(|_| DEFAULT_JVM_OPTS.to_owned());
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("kafka-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .arg(&self.java)
            .args(jvm_opts.split_whitespace())
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(kafka_classpath(&self.libs))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"));
        let process = ProcessGuard::spawn(&format!("kafka-node-{}", node.id), cmd)?;
        self.nodes[i].process = Some(process);
        Ok(())
    }

    async fn wait_node_ready(&mut self, i: usize) -> Result<()> {
        let started = Instant::now();
        let expected = self.nodes.iter().filter(|n| n.process.is_some()).count();
        let node = &mut self.nodes[i];
        let id = node.id;
        let addr = format!("127.0.0.1:{}", node.ports.listeners[0]);
        let process = node
            .process
            .as_mut()
            .with_context(|| format!("node {id} is not running"))?;
        let ready = wait::until(
            &format!("Kafka node {id} to answer Metadata with {expected} brokers"),
            READY_TIMEOUT,
            || {
                let running = process.ensure_running();
                let addr = addr.clone();
                async move {
                    running?;
                    probe::api_versions(&addr, Duration::from_secs(2)).await?;
                    let md = probe::metadata(&addr, Duration::from_secs(2)).await?;
                    Ok((md.brokers.len() >= expected).then_some(()))
                }
            },
        )
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("Kafka node {id} log:\n{}", process.logs())));
        }
        if std::env::var_os("KAPSULE_RIG_TIMINGS").is_some() {
            eprintln!("kafka node {id} ready after {:?}", started.elapsed());
        }
        Ok(())
    }

    fn node_index(&self, id: i32) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id} in this cluster"))
    }

    /// The cluster id the nodes were formatted with.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Node ids (1..=n), running or not.
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `127.0.0.1:PORT` of `listener` on node `id`.
    pub fn address(&self, id: i32, listener: Listener) -> Result<String> {
        let node = &self.nodes[self.node_index(id)?];
        Ok(format!(
            "127.0.0.1:{}",
            node.ports.listeners[listener.index()]
        ))
    }

    /// Address of `listener` on the first running node: a bootstrap address for clients or for
    /// Kapsule's `proxy.upstream`.
    pub fn bootstrap_for(&self, listener: Listener) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.process.is_some())
            .unwrap_or(&self.nodes[0]);
        format!("127.0.0.1:{}", node.ports.listeners[listener.index()])
    }

    /// The plaintext bootstrap address ([`Listener::Plaintext`] on the first running node).
    pub fn bootstrap(&self) -> String {
        self.bootstrap_for(Listener::Plaintext)
    }

    /// The PKI that issued the brokers' certificate (CN `kafka-broker`, SANs `localhost` and
    /// `127.0.0.1`); issue client certificates for the MTLS listener from it.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The CA certificate clients trust to reach the TLS listeners.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki.ca_cert()
    }

    /// The users of the SASL listener.
    pub fn users(&self) -> &[KafkaUser] {
        &self.options.users
    }

    /// Process id of node `id`'s watchdog (the JVM's parent), `None` while stopped.
    pub fn pid(&self, id: i32) -> Option<u32> {
        let i = self.node_index(id).ok()?;
        self.nodes[i].process.as_ref().and_then(ProcessGuard::pid)
    }

    /// Tail of node `id`'s log (empty while stopped).
    pub fn logs(&self, id: i32) -> String {
        self.node_index(id)
            .ok()
            .and_then(|i| self.nodes[i].process.as_ref().map(ProcessGuard::logs))
            .unwrap_or_default()
    }

    /// Creates `name` with `partitions` partitions (replication factor: the broker default) and
    /// waits until every running node's Metadata lists it with a leader for every partition.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.create_topic_with(name, partitions, &[]).await
    }

    /// [`KafkaCluster::create_topic`] with topic configs (e.g. `cleanup.policy=compact`).
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_owned())))
            .with_num_partitions(partitions as i32)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            );
        let req = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
        let addr = self.bootstrap();
        let mut c = RawConnection::connect(&addr).await?;
        c.send(ApiKey::CreateTopics, 5, 1, &req).await?;
        let (_, resp) = c
            .recv_as::<CreateTopicsResponse>(ApiKey::CreateTopics, 5, Duration::from_secs(40))
            .await?;
        let t = resp
            .topics
            .first()
            .context("CreateTopics answer without a topic")?;
        ensure!(
            t.error_code == 0,
            "creating topic {name} failed with error code {}: {}",
            t.error_code,
            t.error_message.as_deref().unwrap_or("")
        );
        let running: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.id)
            .collect();
        for id in running {
            let addr = self.address(id, Listener::Plaintext)?;
            wait::until(
                &format!("topic {name} with leaders in node {id}'s metadata"),
                Duration::from_secs(30),
                || {
                    let addr = addr.clone();
                    async move {
                        let leaders = topic_leaders(&addr, name).await?;
                        Ok((leaders.len() == partitions as usize
                            && leaders.iter().all(|l| *l >= 0))
                        .then_some(()))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The leader node of `topic`'s `partition`, as the first running node reports it (`-1`
    /// while the partition has no leader).
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<i32> {
        let leaders = topic_leaders(&self.bootstrap(), topic).await?;
        leaders
            .get(partition as usize)
            .copied()
            .with_context(|| format!("topic {topic} has no partition {partition}"))
    }

    /// Stops node `id` gracefully (SIGTERM: controlled shutdown moves its leaderships; SIGKILL
    /// after 30 s). Its data stays for [`KafkaCluster::start_node`].
    pub fn stop_node(&mut self, id: i32) -> Result<()> {
        let i = self.node_index(id)?;
        let mut process = self.nodes[i]
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        process.terminate(Duration::from_secs(30));
        Ok(())
    }

    /// Kills node `id` (SIGKILL, like a crash). Its data stays for [`KafkaCluster::start_node`].
    pub fn kill_node(&mut self, id: i32) -> Result<()> {
        let i = self.node_index(id)?;
        let mut process = self.nodes[i]
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        process.kill();
        Ok(())
    }

    /// Starts a stopped node `id` again on the same ports and data, and waits until it answers
    /// Metadata listing every running node.
    pub async fn start_node(&mut self, id: i32) -> Result<()> {
        let i = self.node_index(id)?;
        if self.nodes[i].process.is_some() {
            bail!("node {id} is already running");
        }
        self.spawn_node(i)?;
        self.wait_node_ready(i).await
    }
}

/// An operation an ACL grants (Kafka's `AclOperation` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOperation {
    /// READ (3).
    Read = 3,
    /// WRITE (4).
    Write = 4,
    /// DESCRIBE (8).
    Describe = 8,
}

impl KafkaCluster {
    /// Allows `principal` (e.g. `User:alice`, from any host) `operations` on the topic named
    /// exactly `topic` (a LITERAL pattern), and waits until the first running node's authorizer
    /// lists them (DescribeAcls). Needs [`KafkaOptions::with_authorizer`]; sent on the plaintext
    /// listener, whose `User:ANONYMOUS` is a super user.
    pub async fn allow(
        &self,
        principal: &str,
        topic: &str,
        operations: &[AclOperation],
    ) -> Result<()> {
        use kafka_protocol::messages::create_acls_request::AclCreation;
        use kafka_protocol::messages::{
            CreateAclsRequest, CreateAclsResponse, DescribeAclsRequest, DescribeAclsResponse,
        };
        const TOPIC: i8 = 2;
        const LITERAL: i8 = 3;
        const ALLOW: i8 = 3;
        const ANY: i8 = 1;
        ensure!(
            self.options.super_users.is_some(),
            "ACLs need a cluster started with KafkaOptions::with_authorizer"
        );
        let creations = operations
            .iter()
            .map(|op| {
                AclCreation::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_string(topic.to_owned()))
                    .with_resource_pattern_type(LITERAL)
                    .with_principal(StrBytes::from_string(principal.to_owned()))
                    .with_host(StrBytes::from_static_str("*"))
                    .with_operation(*op as i8)
                    .with_permission_type(ALLOW)
            })
            .collect();
        let addr = self.bootstrap();
        let mut c = RawConnection::connect(&addr).await?;
        c.send(
            ApiKey::CreateAcls,
            3,
            1,
            &CreateAclsRequest::default().with_creations(creations),
        )
        .await?;
        let (_, resp) = c
            .recv_as::<CreateAclsResponse>(ApiKey::CreateAcls, 3, Duration::from_secs(30))
            .await?;
        for r in &resp.results {
            ensure!(
                r.error_code == 0,
                "creating ACLs for {principal} on topic {topic} failed with error code {}: {}",
                r.error_code,
                r.error_message.as_deref().unwrap_or("")
            );
        }
        let describe = DescribeAclsRequest::default()
            .with_resource_type_filter(TOPIC)
            .with_resource_name_filter(Some(StrBytes::from_string(topic.to_owned())))
            .with_pattern_type_filter(LITERAL)
            .with_principal_filter(Some(StrBytes::from_string(principal.to_owned())))
            .with_host_filter(None)
            .with_operation(ANY)
            .with_permission_type(ANY);
        let want = operations.len();
        wait::until(
            &format!("the authorizer to list {want} ACL(s) of {principal} on {topic}"),
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                let describe = describe.clone();
                async move {
                    let mut c = RawConnection::connect(&addr).await?;
                    c.send(ApiKey::DescribeAcls, 3, 2, &describe).await?;
                    let (_, resp) = c
                        .recv_as::<DescribeAclsResponse>(
                            ApiKey::DescribeAcls,
                            3,
                            Duration::from_secs(5),
                        )
                        .await?;
                    ensure!(
                        resp.error_code == 0,
                        "DescribeAcls failed with error code {}: {}",
                        resp.error_code,
                        resp.error_message.as_deref().unwrap_or("")
                    );
                    let listed: usize = resp.resources.iter().map(|r| r.acls.len()).sum();
                    ensure!(listed >= want, "{listed} listed so far");
                    Ok(Some(()))
                }
            },
        )
        .await
    }
}

/// Leader node per partition of `topic` (index = partition), from Metadata v12 sent to `addr`.
/// Fails when the topic is unknown there.
pub async fn topic_leaders(addr: &str, topic: &str) -> Result<Vec<i32>> {
    let md = topic_metadata(addr, topic).await?;
    let t = md
        .topics
        .first()
        .with_context(|| format!("Metadata from {addr} lists no topic"))?;
    ensure!(
        t.error_code == 0,
        "Metadata for {topic} from {addr}: error code {}",
        t.error_code
    );
    let mut parts: Vec<(i32, i32)> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    parts.sort();
    Ok(parts.into_iter().map(|(_, l)| l).collect())
}

/// Waits up to 60 s until Metadata from `addr` names a leader of partition 0 of `topic` other
/// than `old` (after `old` was stopped), and returns it.
pub async fn wait_for_new_leader(addr: &str, topic: &str, old: i32) -> Result<i32> {
    crate::wait::until(
        "a new leader after stopping the old one",
        Duration::from_secs(60),
        || async move {
            let leaders = topic_leaders(addr, topic).await?;
            Ok(leaders.first().copied().filter(|l| *l >= 0 && *l != old))
        },
    )
    .await
}

/// Metadata v12 for one topic (no auto-creation) from `addr`.
pub async fn topic_metadata(addr: &str, topic: &str) -> Result<MetadataResponse> {
    let mut c = RawConnection::connect(addr).await?;
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_owned())),
        ))]))
        .with_allow_auto_topic_creation(false);
    c.send(ApiKey::Metadata, 12, 1, &req).await?;
    let (_, md) = c
        .recv_as::<MetadataResponse>(ApiKey::Metadata, 12, Duration::from_secs(5))
        .await?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        for _ in 0..100 {
            let id = random_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }

    #[test]
    fn version_comes_from_the_pom() {
        let v = kafka_version().unwrap();
        assert!(v.starts_with("4."), "{v}");
    }
}
