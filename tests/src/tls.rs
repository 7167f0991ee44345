//! TLS test fixtures: a throw-away PKI made with the `openssl` CLI, `stunnel4` as a TLS
//! terminator in front of tansu (tansu 0.6 ignores its own `--cert/--key`), `haproxy` in TCP mode,
//! a tansu that advertises another address, and Kapsule started from a full config whose
//! listener speaks TLS (so the plaintext readiness probe of [`crate::Kapsule`] cannot be used).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::clients::run_python;
use crate::kapsule::kapsule_bin;
use crate::ports::free_port;
use crate::probe;
use crate::process::{find_executable, ProcessGuard};
use crate::records::ConsumedRecord;
use crate::wait;

/// Private key encodings a certificate can be issued with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// EC P-256 in PKCS#8 (`BEGIN PRIVATE KEY`).
    EcPkcs8,
    /// EC P-256 in SEC1 (`BEGIN EC PRIVATE KEY`).
    EcSec1,
    /// RSA 2048 in PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
}

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM certificate (with the intermediate appended when issued under one).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A CA (root, optionally an intermediate) in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    name: String,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Pki {
    /// A new self-signed root CA called `name`.
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-pki-")
            .tempdir()?;
        let d = dir.path();
        let ca = format!("{name}-ca");
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        std::fs::write(d.join("index.txt"), "")?;
        std::fs::write(d.join("serial"), "1000\n")?;
        std::fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n",
        )?;
        Ok(Self {
            dir,
            name: name.to_owned(),
        })
    }

    /// Directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root CA certificate (what clients and servers trust).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join(format!("{}-ca.pem", self.name))
    }

    /// Issues a certificate for `cn` with SANs `localhost` and `127.0.0.1`, usable as server and
    /// client certificate. `chain`: signed by an intermediate, which is appended to the cert file.
    /// `expired`: valid only during 2020-01-01.
    pub fn issue(&self, cn: &str, key: KeyKind, chain: bool, expired: bool) -> Result<Issued> {
        self.issue_with_sans(cn, key, chain, expired, "DNS:localhost,IP:127.0.0.1")
    }

    /// [`Pki::issue`] with the given `subjectAltName` list, e.g.
    /// `DNS:kafka.example,DNS:*.kafka.example`.
    pub fn issue_with_sans(
        &self,
        cn: &str,
        key: KeyKind,
        chain: bool,
        expired: bool,
        sans: &str,
    ) -> Result<Issued> {
        let d = self.dir.path();
        let key_file = format!("{cn}.key");
        match key {
            KeyKind::EcPkcs8 => openssl(
                d,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key_file,
                ],
            )?,
            KeyKind::EcSec1 => openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &key_file,
                ],
            )?,
            KeyKind::RsaPkcs1 => {
                openssl(d, &["genrsa", "-traditional", "-out", &key_file, "2048"])?
            }
        }
        let (signer_cert, signer_key) = if chain {
            self.intermediate()?
        } else {
            (
                format!("{}-ca.pem", self.name),
                format!("{}-ca.key", self.name),
            )
        };
        let csr = format!("{cn}.csr");
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                &key_file,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        )?;
        let ext = format!("{cn}.ext");
        std::fs::write(
            d.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n"),
        )?;
        let leaf = format!("{cn}.leaf.pem");
        let (start, end) = if expired {
            ("20200101000000Z", "20200102000000Z")
        } else {
            ("20240101000000Z", "20400101000000Z")
        };
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                &signer_cert,
                "-keyfile",
                &signer_key,
                "-in",
                &csr,
                "-out",
                &leaf,
                "-startdate",
                start,
                "-enddate",
                end,
                "-extfile",
                &ext,
                "-notext",
            ],
        )?;
        let mut pem = std::fs::read(d.join(&leaf))?;
        if chain {
            pem.extend(std::fs::read(d.join(&signer_cert))?);
        }
        let cert = d.join(format!("{cn}.pem"));
        std::fs::write(&cert, pem)?;
        Ok(Issued {
            cert,
            key: d.join(key_file),
        })
    }

    /// The intermediate CA (created on first use), signed by the root.
    fn intermediate(&self) -> Result<(String, String)> {
        let d = self.dir.path();
        let (cert, key) = (
            format!("{}-int.pem", self.name),
            format!("{}-int.key", self.name),
        );
        if d.join(&cert).exists() {
            return Ok((cert, key));
        }
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        )?;
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-out",
                "int.csr",
                "-subj",
                &format!("/CN={}-int", self.name),
            ],
        )?;
        std::fs::write(
            d.join("int.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )?;
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                &format!("{}-ca.pem", self.name),
                "-keyfile",
                &format!("{}-ca.key", self.name),
                "-in",
                "int.csr",
                "-out",
                &cert,
                "-startdate",
                "20240101000000Z",
                "-enddate",
                "20400101000000Z",
                "-extfile",
                "int.ext",
                "-notext",
            ],
        )?;
        Ok((cert, key))
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_port(addr: &str, what: &str, process: &mut ProcessGuard) -> Result<()> {
    let r = wait::until(what, Duration::from_secs(20), || {
        let running = process.ensure_running();
        let addr = addr.to_owned();
        async move {
            running?;
            Ok(tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()))
        }
    })
    .await;
    r.map_err(|e| e.context(format!("log:\n{}", process.logs())))
}

/// `stunnel4` terminating TLS on `127.0.0.1:port` and forwarding plaintext to `connect`.
#[derive(Debug)]
pub struct Stunnel {
    /// The TLS address brokers are reached at.
    pub addr: String,
    process: ProcessGuard,
    _conf: tempfile::NamedTempFile,
}

impl Stunnel {
    /// Starts stunnel on `port` with `server` as its certificate; with `client_ca` it requires
    /// client certificates chaining to that CA (`verifyChain`).
    pub async fn start(
        port: u16,
        connect: &str,
        server: &Issued,
        client_ca: Option<&Path>,
    ) -> Result<Self> {
        let bin = find_executable("STUNNEL_BIN", "stunnel4")
            .or_else(|_| find_executable("STUNNEL_BIN", "stunnel"))
            .context("stunnel4 is not installed (scripts/install-deps.sh installs it)")?;
        let addr = format!("127.0.0.1:{port}");
        let mut conf = tempfile::Builder::new()
            .prefix("kapsule-rig-stunnel-")
            .suffix(".conf")
            .tempfile()?;
        let mut text = format!(
            "foreground = yes\npid =\ndebug = 4\n[kafka]\naccept = {addr}\nconnect = {connect}\ncert = {}\nkey = {}\n",
            server.cert.display(),
            server.key.display()
        );
        if let Some(ca) = client_ca {
            text.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        conf.write_all(text.as_bytes())?;
        let mut cmd = Command::new(bin);
        cmd.arg(conf.path());
        let mut process = ProcessGuard::spawn("stunnel", cmd)?;
        wait_port(&addr, "stunnel to listen", &mut process).await?;
        Ok(Self {
            addr,
            process,
            _conf: conf,
        })
    }

    /// stunnel's log (handshake failures are logged here).
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// A tansu broker on a free plaintext port that advertises `advertised` (e.g. a stunnel in front
/// of it), so every client, Kapsule included, is sent through that address.
pub async fn tansu_advertising(advertised: &str) -> Result<(ProcessGuard, String)> {
    let bin = find_executable("TANSU_BIN", "tansu")?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.args(["broker", "--listener-url", &format!("tcp://{listen}")])
        .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
        .args([
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            &format!("kapsule-tls-{port}"),
        ])
        .env(
            "RUST_LOG",
            std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let mut process = ProcessGuard::spawn("tansu", cmd)?;
    let r = wait::until(
        "tansu to answer ApiVersions",
        Duration::from_secs(30),
        || {
            let running = process.ensure_running();
            let listen = listen.clone();
            async move {
                running?;
                probe::api_versions(&listen, Duration::from_secs(2)).await?;
                Ok(Some(()))
            }
        },
    )
    .await;
    r.map_err(|e| e.context(format!("tansu log:\n{}", process.logs())))?;
    Ok((process, listen))
}

/// Creates `topic` with `tansu topic create` against the plaintext broker address `broker`.
pub async fn create_topic(broker: &str, topic: &str, partitions: u32) -> Result<()> {
    let bin = find_executable("TANSU_BIN", "tansu")?;
    let out = tokio::process::Command::new(bin)
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://{broker}")])
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "tansu topic create {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Kapsule started with `yaml` verbatim (`{listen}` and `{admin}` replaced with free addresses),
/// ready once `/readyz` answers 200 and the listener accepts TCP.
#[derive(Debug)]
pub struct RawKapsule {
    /// Bootstrap listener address.
    pub listen: String,
    /// Admin address.
    pub admin: String,
    /// The process.
    pub process: ProcessGuard,
    _config: tempfile::NamedTempFile,
}

impl RawKapsule {
    /// Writes the config and spawns `kapsule run --config FILE` without waiting.
    pub fn spawn(yaml: &str) -> Result<Self> {
        let log = std::env::var("KAPSULE_LOG").unwrap_or_else(|_| "info".into());
        Self::spawn_with_log(yaml, &log)
    }

    /// [`RawKapsule::spawn`] with a log filter (`--log`), e.g. `info,kapsule::proxy=debug`.
    pub fn spawn_with_log(yaml: &str, log: &str) -> Result<Self> {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let yaml = yaml.replace("{listen}", &listen).replace("{admin}", &admin);
        let mut file = tempfile::Builder::new()
            .prefix("kapsule-rig-config-")
            .suffix(".yaml")
            .tempfile()?;
        file.write_all(yaml.as_bytes())?;
        let mut cmd = Command::new(kapsule_bin()?);
        cmd.arg("run")
            .arg("--config")
            .arg(file.path())
            .args(["--log", log]);
        let process = ProcessGuard::spawn("kapsule", cmd)?;
        Ok(Self {
            listen,
            admin,
            process,
            _config: file,
        })
    }

    /// [`RawKapsule::spawn`] and wait until ready.
    pub async fn start(yaml: &str) -> Result<Self> {
        Self::wait_ready(Self::spawn(yaml)?).await
    }

    /// Waits until `/readyz` answers 200 and the listener accepts TCP.
    pub async fn wait_ready(k: Self) -> Result<Self> {
        let mut k = k;
        let (admin, listen) = (k.admin.clone(), k.listen.clone());
        let r = wait::until("kapsule /readyz", Duration::from_secs(30), || {
            let running = k.process.ensure_running();
            let (admin, listen) = (admin.clone(), listen.clone());
            async move {
                running?;
                let (status, _) =
                    probe::http_get(&admin, "/readyz", Duration::from_secs(2)).await?;
                if status != 200 {
                    return Ok(None);
                }
                Ok(tokio::net::TcpStream::connect(&listen)
                    .await
                    .ok()
                    .map(|_| ()))
            }
        })
        .await;
        r.map_err(|e| e.context(format!("kapsule log:\n{}", k.process.logs())))?;
        Ok(k)
    }

    /// Kapsule's log so far, without terminal colour codes (`field=value` stays searchable).
    pub fn logs(&self) -> String {
        strip_ansi(&self.process.logs())
    }

    /// Waits until Kapsule's log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let r = wait::until(&format!("kapsule to log `{needle}`"), timeout, || {
            let found = self.logs().contains(needle);
            async move { Ok(found.then_some(())) }
        })
        .await;
        r.map_err(|e| e.context(format!("kapsule log:\n{}", self.logs())))
    }
}

/// `haproxy` in TCP mode: each `(bind, server)` pair forwards with `send-proxy-v2`.
#[derive(Debug)]
pub struct Haproxy {
    process: ProcessGuard,
    _conf: tempfile::NamedTempFile,
}

impl Haproxy {
    /// Starts haproxy with one frontend/backend per pair and waits until every bind accepts.
    pub async fn start(pairs: &[(String, String)]) -> Result<Self> {
        let bin = find_executable("HAPROXY_BIN", "haproxy")
            .context("haproxy is not installed (scripts/install-deps.sh installs it)")?;
        let mut text = String::from(
            "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        );
        for (i, (bind, server)) in pairs.iter().enumerate() {
            text.push_str(&format!(
                "frontend f{i}\n  bind {bind}\n  default_backend b{i}\nbackend b{i}\n  server s{i} {server} send-proxy-v2\n"
            ));
        }
        let mut conf = tempfile::Builder::new()
            .prefix("kapsule-rig-haproxy-")
            .suffix(".cfg")
            .tempfile()?;
        conf.write_all(text.as_bytes())?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(conf.path());
        let mut process = ProcessGuard::spawn("haproxy", cmd)?;
        for (bind, _) in pairs {
            wait_port(bind, "haproxy to listen", &mut process).await?;
        }
        if let Some(status) = process.exit_status() {
            bail!("haproxy exited with {status}: {}", process.logs());
        }
        Ok(Self {
            process,
            _conf: conf,
        })
    }

    /// haproxy's log.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// Removes ANSI escape sequences (`ESC [ ... m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// confluent-kafka `--config` arguments for TLS to Kapsule (`security.protocol=SSL`, trusting
/// `ca`), presenting `client`'s certificate when given (an mTLS principal) and none otherwise.
pub fn ck_ssl(ca: &Path, client: Option<&Issued>) -> Vec<String> {
    let mut v = vec![
        "--config".into(),
        "security.protocol=SSL".into(),
        "--config".into(),
        format!("ssl.ca.location={}", ca.display()),
    ];
    if let Some(c) = client {
        v.extend([
            "--config".into(),
            format!("ssl.certificate.location={}", c.cert.display()),
            "--config".into(),
            format!("ssl.key.location={}", c.key.display()),
        ]);
    }
    v
}

/// Reads up to `count` records of `topic` from the beginning with kafka-python over TLS
/// (`kp_consume_tls.py`: trusting `ca`, with `client`'s certificate when given), stopping at
/// the first error or after 30 s: the records read and the errors the client raised.
pub async fn kp_consume_tls(
    bootstrap: &str,
    topic: &str,
    count: usize,
    ca: &Path,
    client: Option<&Issued>,
) -> Result<(Vec<ConsumedRecord>, Vec<Value>)> {
    let mut a: Vec<String> = [
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--cafile",
        &ca.display().to_string(),
        "--timeout",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(c) = client {
        a.extend([
            "--certfile".into(),
            c.cert.display().to_string(),
            "--keyfile".into(),
            c.key.display().to_string(),
        ]);
    }
    let out = run_python("kp_consume_tls.py", &a, Duration::from_secs(120))
        .await?
        .json;
    let records = ConsumedRecord::list_from_output(&out)?;
    Ok((
        records,
        out["errors"].as_array().cloned().unwrap_or_default(),
    ))
}
