//! Starts `local-kms` (nsmithuk/local-kms, from the Go module proxy; installed by
//! scripts/install-deps.sh), a server that speaks the AWS KMS JSON API, on a free loopback port,
//! and stops it on drop (also when a test panics).
//!
//! local-kms keeps its keys in a data directory, so [`LocalAwsKms::kill`] then
//! [`LocalAwsKms::restart`] is an outage after which the same keys are back. Unlike moto 5.2, it
//! enforces key states the way AWS does: a disabled key answers `DisabledException`, a key
//! pending deletion `KMSInvalidStateException`. Keys are administered through the AWS SDK with
//! static test credentials (local-kms does not check signatures).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};

use crate::process::{find_executable, ProcessGuard};
use crate::{free_port, wait};

/// Region and account local-kms puts its keys in.
pub const REGION: &str = "eu-west-1";
/// Account id of the keys' ARNs.
pub const ACCOUNT: &str = "111122223333";
/// Static credentials Kapsule signs with (any value works against local-kms).
pub const TEST_CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "AKIDKAPSULERIG"),
    ("AWS_SECRET_ACCESS_KEY", "kapsule-rig-secret"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A running local-kms.
#[derive(Debug)]
pub struct LocalAwsKms {
    process: Option<ProcessGuard>,
    bin: PathBuf,
    port: u16,
    data: tempfile::TempDir,
    client: aws_sdk_kms::Client,
}

/// The `local-kms` binary: `LOCAL_KMS_BIN`, PATH, `~/.cargo/bin`, then `~/go/bin` (where
/// `go install` puts it).
pub fn local_kms_binary() -> Result<PathBuf> {
    find_executable("LOCAL_KMS_BIN", "local-kms").or_else(|e| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join("go/bin/local-kms"))
            .filter(|p| p.is_file())
            .ok_or(e)
    })
}

impl LocalAwsKms {
    /// Starts local-kms with an empty data directory and waits until it answers `ListKeys`.
    pub async fn start() -> Result<Self> {
        let bin = local_kms_binary()?;
        let port = free_port();
        let data = tempfile::Builder::new()
            .prefix("kapsule-rig-local-kms-")
            .tempdir()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = admin_client(&endpoint);
        let mut kms = Self {
            process: None,
            bin,
            port,
            data,
            client,
        };
        kms.spawn().await?;
        Ok(kms)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.env("PORT", self.port.to_string())
            .env("KMS_REGION", REGION)
            .env("KMS_ACCOUNT_ID", ACCOUNT)
            .env("KMS_DATA_PATH", self.data.path())
            // No seed file: keys are created by the tests.
            .env("KMS_SEED_PATH", self.data.path().join("no-seed.yaml"));
        let mut process = ProcessGuard::spawn("local-kms", cmd)?;
        let client = self.client.clone();
        let ready = wait::until("local-kms ListKeys", Duration::from_secs(30), || {
            let running = process.ensure_running();
            let client = client.clone();
            async move {
                running?;
                client.list_keys().send().await?;
                Ok(Some(()))
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("local-kms log:\n{}", process.logs())));
        }
        self.process = Some(process);
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK client for administering keys (create, disable, schedule deletion...).
    pub fn admin(&self) -> &aws_sdk_kms::Client {
        &self.client
    }

    /// The `kms:` section of a Kapsule config using this server: key id `X` is `alias/X`, its
    /// HMAC key `alias/X-mac`.
    pub fn kapsule_yaml(&self, timeout_ms: u64, retries: u32) -> String {
        format!(
            "kms:\n  type: aws\n  region: {REGION}\n  endpoint: \"{}\"\n  key_template: \"alias/{{key_id}}\"\n  mac_key_template: \"alias/{{key_id}}-mac\"\n  timeout_ms: {timeout_ms}\n  retries: {retries}\n",
            self.endpoint()
        )
    }

    /// Creates a symmetric key with alias `alias/<name>` and an HMAC key with alias
    /// `alias/<name>-mac` (what [`LocalAwsKms::kapsule_yaml`] maps `name` to); returns the key id
    /// of the symmetric key.
    pub async fn create_key(&self, name: &str) -> Result<String> {
        let key = self.create_aliased(&format!("alias/{name}"), None).await?;
        self.create_aliased(
            &format!("alias/{name}-mac"),
            Some((KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac)),
        )
        .await?;
        Ok(key)
    }

    async fn create_aliased(
        &self,
        alias: &str,
        spec: Option<(KeySpec, KeyUsageType)>,
    ) -> Result<String> {
        let mut req = self.client.create_key();
        if let Some((spec, usage)) = spec {
            req = req.key_spec(spec).key_usage(usage);
        }
        let key = req
            .send()
            .await
            .with_context(|| format!("CreateKey for {alias}"))?
            .key_metadata
            .context("CreateKey: no metadata")?
            .key_id;
        self.client
            .create_alias()
            .alias_name(alias)
            .target_key_id(&key)
            .send()
            .await
            .with_context(|| format!("CreateAlias {alias}"))?;
        Ok(key)
    }

    /// `DisableKey` on the key with id `key_id`.
    pub async fn disable_key(&self, key_id: &str) -> Result<()> {
        self.client.disable_key().key_id(key_id).send().await?;
        Ok(())
    }

    /// `EnableKey` on the key with id `key_id`.
    pub async fn enable_key(&self, key_id: &str) -> Result<()> {
        self.client.enable_key().key_id(key_id).send().await?;
        Ok(())
    }

    /// `ScheduleKeyDeletion` (7 days, the minimum) on the key with id `key_id`.
    pub async fn schedule_deletion(&self, key_id: &str) -> Result<()> {
        self.client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(7)
            .send()
            .await?;
        Ok(())
    }

    /// `CancelKeyDeletion` on the key with id `key_id` (it stays disabled, as in AWS).
    pub async fn cancel_deletion(&self, key_id: &str) -> Result<()> {
        self.client
            .cancel_key_deletion()
            .key_id(key_id)
            .send()
            .await?;
        Ok(())
    }

    fn pid(&self) -> Result<u32> {
        self.process
            .as_ref()
            .and_then(ProcessGuard::pid)
            .context("local-kms is not running")
    }

    /// Freezes the server (connections accepted, never answered).
    pub fn pause(&self) -> Result<()> {
        crate::process::freeze(self.pid()?)
    }

    /// Lets a paused server answer again.
    pub fn resume(&self) -> Result<()> {
        crate::process::thaw(self.pid()?)
    }

    /// Kills the server (connections are refused afterwards); the keys stay in the data directory.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port with the same keys.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        wait::until("local-kms port to be free", Duration::from_secs(10), || {
            let port = self.port;
            async move {
                Ok(std::net::TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|_| ()))
            }
        })
        .await?;
        self.spawn().await
    }
}

/// An SDK client of `endpoint` with the static test credentials (no retries: the rig waits).
fn admin_client(endpoint: &str) -> aws_sdk_kms::Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let credentials = aws_sdk_kms::config::Credentials::new(
        TEST_CREDENTIALS[0].1,
        TEST_CREDENTIALS[1].1,
        None,
        None,
        "kapsule-rig",
    );
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .credentials_provider(credentials)
        .http_client(http)
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    aws_sdk_kms::Client::from_conf(config)
}
