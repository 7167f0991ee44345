//! [`SaslTansu`]: a real tansu broker that requires SASL (`--authentication`), with SCRAM users
//! and topics prepared before authentication is switched on.
//!
//! tansu with `--authentication` closes every unauthenticated connection, `tansu user create`
//! and `tansu topic create` included, so users cannot be created on a running authenticated
//! broker, and `memory://` storage forgets them on restart. The rig therefore starts tansu on a
//! `sqlite://` file (the `libsql` feature, installed by scripts/install-deps.sh) without
//! authentication, creates users and topics, stops it, and starts it again on the same file and
//! port with `--authentication`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::ports::free_port;
use crate::probe;
use crate::process::{find_executable, ProcessGuard};
use crate::tls::create_topic;
use crate::wait;

/// A SCRAM mechanism for `tansu user create --mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scram {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl Scram {
    /// The Kafka mechanism name, e.g. `SCRAM-SHA-256`.
    pub fn kafka_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn tansu_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

/// A SCRAM user to create before authentication is switched on.
#[derive(Debug, Clone)]
pub struct SaslUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Mechanism the credential is stored for.
    pub mechanism: Scram,
}

impl SaslUser {
    /// A user `name` with `password` for `mechanism`.
    pub fn new(name: &str, password: &str, mechanism: Scram) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
            mechanism,
        }
    }
}

/// A tansu broker requiring SASL, stopped (and its store deleted) when dropped.
#[derive(Debug)]
pub struct SaslTansu {
    /// `127.0.0.1:PORT` of the broker (it advertises this address).
    pub addr: String,
    /// The broker process.
    pub process: ProcessGuard,
    _dir: tempfile::TempDir,
}

impl SaslTansu {
    /// Starts tansu on a fresh sqlite store, creates `users` and `topics` (name, partitions),
    /// then restarts it with `--authentication` and waits until it answers ApiVersions.
    pub async fn start(users: &[SaslUser], topics: &[(&str, u32)]) -> Result<Self> {
        let bin = find_executable("TANSU_BIN", "tansu")?;
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-tansu-sasl-")
            .tempdir()?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // tansu 0.6 resolves a `sqlite://` path against its working directory, even one that
        // starts with `/` (`sqlite:///tmp/x.db` opens `$PWD/tmp/x.db`): run it in `dir`.
        let store = "sqlite://tansu.db";

        let mut open = launch(&bin, &addr, store, dir.path(), false).await?;
        for u in users {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(&bin)
                    .args(["user", "create", &u.name, &u.password])
                    .args(["--mechanism", u.mechanism.tansu_name()])
                    .args(["--broker", &format!("tcp://{addr}")])
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .context("`tansu user create` did not finish in 30 s")??;
            ensure!(
                out.status.success(),
                "`tansu user create {}` failed: {}{}\ntansu log:\n{}",
                u.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                open.logs()
            );
        }
        for (topic, partitions) in topics {
            create_topic(&addr, topic, *partitions)
                .await
                .with_context(|| format!("tansu log:\n{}", open.logs()))?;
        }
        open.terminate(Duration::from_secs(5));
        drop(open);

        // The port was just released; a few quick retries cover a slow socket teardown.
        let mut last = None;
        for _ in 0..5 {
            match launch(&bin, &addr, store, dir.path(), true).await {
                Ok(process) => {
                    return Ok(Self {
                        addr,
                        process,
                        _dir: dir,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Tail of the broker's log.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

async fn launch(
    bin: &PathBuf,
    addr: &str,
    store: &str,
    cwd: &Path,
    auth: bool,
) -> Result<ProcessGuard> {
    let url = format!("tcp://{addr}");
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd)
        .args(["broker", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", store])
        // Same id on both starts: the store's users and topics belong to the cluster.
        .args([
            "--cluster-id",
            &format!("kapsule-sasl-{}", addr.replace([':', '.'], "-")),
        ])
        .env(
            "RUST_LOG",
            std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
        );
    if auth {
        cmd.arg("--authentication");
    }
    let mut process = ProcessGuard::spawn("tansu", cmd)?;
    let r = wait::until(
        "tansu to answer ApiVersions",
        Duration::from_secs(30),
        || {
            let running = process.ensure_running();
            let addr = addr.to_owned();
            async move {
                running?;
                Ok(probe::api_versions(&addr, Duration::from_secs(2))
                    .await
                    .ok()
                    .map(|_| ()))
            }
        },
    )
    .await;
    r.map_err(|e| e.context(format!("tansu log:\n{}", process.logs())))?;
    Ok(process)
}

/// SaslHandshake v1 for `mechanism` on a raw connection: the broker's error code.
pub async fn raw_handshake(
    c: &mut probe::RawConnection,
    mechanism: &str,
    correlation_id: i32,
) -> Result<i16> {
    use kafka_protocol::messages::{ApiKey, SaslHandshakeRequest, SaslHandshakeResponse};
    let request = SaslHandshakeRequest::default().with_mechanism(
        kafka_protocol::protocol::StrBytes::from_string(mechanism.to_owned()),
    );
    c.send(ApiKey::SaslHandshake, 1, correlation_id, &request)
        .await?;
    let (_, answer) = c
        .recv_as::<SaslHandshakeResponse>(ApiKey::SaslHandshake, 1, Duration::from_secs(10))
        .await?;
    Ok(answer.error_code)
}

/// One SaslAuthenticate v2 round carrying `auth_bytes` on a raw connection: the broker's answer,
/// or `None` when the connection closed instead (Kapsule refuses a malformed message that way).
pub async fn raw_authenticate(
    c: &mut probe::RawConnection,
    auth_bytes: Vec<u8>,
    correlation_id: i32,
) -> Result<Option<kafka_protocol::messages::SaslAuthenticateResponse>> {
    use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse};
    let request = SaslAuthenticateRequest::default().with_auth_bytes(auth_bytes.into());
    c.send(ApiKey::SaslAuthenticate, 2, correlation_id, &request)
        .await?;
    let Some(frame) = c.recv(Duration::from_secs(10)).await? else {
        return Ok(None);
    };
    let (_, answer) = kapsule::kafka::frame::decode_response::<SaslAuthenticateResponse>(
        ApiKey::SaslAuthenticate,
        2,
        frame,
    )?;
    Ok(Some(answer))
}

/// A PLAIN message (RFC 4616) with an empty authorization id.
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

/// An unsecured JWS (`alg: none`, no signature) as Kafka's unsecured OAUTHBEARER validator
/// accepts it: `sub` names the principal; it expires `lifetime_secs` from now (negative: already
/// expired).
pub fn unsecured_jwt(sub: &str, lifetime_secs: i64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let claims = serde_json::json!({"sub": sub, "iat": now.min(now + lifetime_secs) - 10, "exp": now + lifetime_secs});
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none"}"#),
        b64.encode(claims.to_string())
    )
}

/// An OAUTHBEARER client-first message (RFC 7628: `n,,` then `auth=Bearer TOKEN` key/value
/// pairs separated by `\x01`) with one `auth=` pair per token, in order.
pub fn oauthbearer_message(tokens: &[&str]) -> Vec<u8> {
    let mut m = String::from("n,,\u{1}");
    for t in tokens {
        m.push_str(&format!("auth=Bearer {t}\u{1}"));
    }
    m.push('\u{1}');
    m.into_bytes()
}
