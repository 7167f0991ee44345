//! Vault authentication beyond static tokens: AppRole login, renewal before expiry, re-login.
//!
//! `kms.vault.auth: { method: approle, role_id_file | role_id_env, secret_id_file | secret_id_env }`.
//! The first KMS call logs in (`POST auth/{mount}/login`). A background task then renews the
//! token (`POST auth/token/renew-self`) once two thirds of its lease have passed. When renewal
//! fails, or the renewed lease comes back shorter than half the login lease (the token is close
//! to its `token_max_ttl`), it logs in again, so a new token is in force before the old one
//! expires. A call refused with 403 also triggers one immediate re-login and retry. The role id
//! and secret id are read from their files or variables at every login (a rotated secret id on
//! disk is picked up); neither they nor any token are ever logged.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::RwLock;
use serde::Deserialize;
use tracing::{error, info, warn};
use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::{build_client, classify, VaultKmsConfig};

fn default_approle_mount() -> String {
    "approle".to_owned()
}

/// The auth method (`method:`); only AppRole for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// AppRole: role id + secret id.
    Approle,
}

/// `kms.auth`: how Kapsule obtains its Vault token when it is not a static token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAuthConfig {
    /// `approle`.
    pub method: VaultAuthMethod,
    /// Mount path of the AppRole auth method (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    /// File holding the role id.
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    /// Environment variable holding the role id.
    #[serde(default)]
    pub role_id_env: Option<String>,
    /// File holding the secret id (re-read at every login).
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// Environment variable holding the secret id.
    #[serde(default)]
    pub secret_id_env: Option<String>,
}

impl VaultAuthConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        for (what, file, env) in [
            ("role_id", &self.role_id_file, &self.role_id_env),
            ("secret_id", &self.secret_id_file, &self.secret_id_env),
        ] {
            match (file, env) {
                (Some(_), Some(_)) => problems.push(format!(
                    "{path}: set only one of {what}_file and {what}_env"
                )),
                (None, None) => problems.push(format!(
                    "{path}: {what}_file or {what}_env is required for method approle"
                )),
                _ => {}
            }
        }
        if self.mount.is_empty() || self.mount.starts_with('/') || self.mount.ends_with('/') {
            problems.push(format!(
                "{path}.mount: '{}' must be a non-empty path without leading or trailing '/'",
                self.mount
            ));
        }
    }

    fn read(
        file: &Option<PathBuf>,
        env: &Option<String>,
        what: &str,
    ) -> anyhow::Result<Zeroizing<String>> {
        let raw = match (file, env) {
            (Some(f), _) => Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the AppRole {what} file {}", f.display()))?,
            ),
            (None, Some(var)) => Zeroizing::new(std::env::var(var).with_context(|| {
                format!("AppRole {what} environment variable {var} is not set")
            })?),
            (None, None) => bail!("no source configured for the AppRole {what}"),
        };
        let v = Zeroizing::new(raw.trim().to_owned());
        if v.is_empty() {
            bail!("the AppRole {what} is empty");
        }
        Ok(v)
    }
}

/// A token in force and what Vault said about its lease.
struct Lease {
    token: Zeroizing<String>,
    obtained: Instant,
    ttl: Duration,
    /// Lease granted at login; a renewal giving much less means `token_max_ttl` is near.
    login_ttl: Duration,
    renewable: bool,
}

impl Lease {
    fn from_auth(info: vaultrs::api::AuthInfo, login_ttl: Option<Duration>) -> Self {
        let ttl = Duration::from_secs(info.lease_duration);
        Self {
            token: Zeroizing::new(info.client_token),
            obtained: Instant::now(),
            ttl,
            login_ttl: login_ttl.unwrap_or(ttl),
            renewable: info.renewable,
        }
    }

    /// When to act: two thirds into the lease. `None` for tokens without expiry.
    fn refresh_at(&self) -> Option<Instant> {
        (!self.ttl.is_zero()).then(|| self.obtained + self.ttl * 2 / 3)
    }

    fn usable(&self) -> bool {
        self.ttl.is_zero() || self.obtained.elapsed() < self.ttl
    }
}

/// AppRole token keeper shared by a [`super::VaultKms`] and its renewal task.
pub(super) struct AppRole {
    auth: VaultAuthConfig,
    vault: VaultKmsConfig,
    /// The client every KMS call uses; replaced when the token changes.
    client: Arc<RwLock<Arc<VaultClient>>>,
    lease: tokio::sync::Mutex<Option<Lease>>,
    renewer_started: std::sync::atomic::AtomicBool,
}

impl AppRole {
    pub(super) fn new(
        auth: VaultAuthConfig,
        vault: VaultKmsConfig,
        client: Arc<RwLock<Arc<VaultClient>>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            auth,
            vault,
            client,
            lease: tokio::sync::Mutex::new(None),
            renewer_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes sure a usable token is in force, logging in when there is none (first call, or
    /// after renewal and re-login both failed for longer than the lease).
    pub(super) async fn ensure(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut lease = self.lease.lock().await;
        if lease.as_ref().is_some_and(Lease::usable) {
            return Ok(());
        }
        *lease = Some(self.login().await?);
        drop(lease);
        self.start_renewer();
        Ok(())
    }

    /// Logs in again at once (after Vault refused the current token).
    pub(super) async fn relogin(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut lease = self.lease.lock().await;
        *lease = Some(self.login().await?);
        Ok(())
    }

    fn install(&self, token: &str) -> anyhow::Result<()> {
        let c = build_client(&self.vault, token)?;
        *self.client.write() = Arc::new(c);
        Ok(())
    }

    async fn login(&self) -> anyhow::Result<Lease> {
        let lease = self.fetch_login().await?;
        self.install(&lease.token)?;
        Ok(lease)
    }

    /// The AppRole login call alone: the new lease, not yet installed.
    async fn fetch_login(&self) -> anyhow::Result<Lease> {
        let role_id =
            VaultAuthConfig::read(&self.auth.role_id_file, &self.auth.role_id_env, "role id")?;
        let secret_id = VaultAuthConfig::read(
            &self.auth.secret_id_file,
            &self.auth.secret_id_env,
            "secret id",
        )?;
        // The login call itself carries no token.
        let anon = build_client(&self.vault, "")?;
        let timeout = Duration::from_millis(self.vault.timeout_ms);
        let info = tokio::time::timeout(
            timeout,
            vaultrs::auth::approle::login(&anon, &self.auth.mount, &role_id, &secret_id),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} ms", self.vault.timeout_ms))?
        .map_err(|e| {
            anyhow::anyhow!(
                "AppRole login at {}/v1/auth/{}/login failed: {} (check the role id, secret id and that the secret id has not expired or been used up)",
                self.vault.address,
                self.auth.mount,
                classify(&e).1
            )
        })?;
        let lease = Lease::from_auth(info, None);
        info!(
            ttl_secs = lease.ttl.as_secs(),
            renewable = lease.renewable,
            "Vault AppRole login succeeded"
        );
        Ok(lease)
    }

    /// Renews the token of `current` (the lease as it was when renewal started); `Ok(None)` when
    /// it cannot be (not renewable, max TTL near). The renewed lease is not installed.
    async fn renew(&self, current: &RenewalInput) -> anyhow::Result<Option<Lease>> {
        if !current.renewable {
            return Ok(None);
        }
        let client = build_client(&self.vault, &current.token)?;
        let timeout = Duration::from_millis(self.vault.timeout_ms);
        let info = tokio::time::timeout(timeout, vaultrs::token::renew_self(&client, None))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} ms", self.vault.timeout_ms))?
            .map_err(|e| anyhow::anyhow!("token renewal failed: {}", classify(&e).1))?;
        let renewed = Lease::from_auth(info, Some(current.login_ttl));
        if renewed.ttl < renewed.login_ttl / 2 {
            // Near token_max_ttl: the next renewal would leave too little margin.
            return Ok(None);
        }
        Ok(Some(renewed))
    }

    fn start_renewer(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.renewer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(renew_loop(weak));
    }
}

/// Renews (or re-logs in) two thirds into each lease until the KMS is dropped.
async fn renew_loop(weak: Weak<AppRole>) {
    let mut failures = 0u32;
    loop {
        let wake = {
            let Some(this) = weak.upgrade() else { return };
            let lease = this.lease.lock().await;
            match (failures, lease.as_ref().and_then(Lease::refresh_at)) {
                (0, Some(at)) => at,
                (0, None) => Instant::now() + Duration::from_secs(3600),
                // After a failure: retry soon, backing off up to 30 s.
                (n, _) => Instant::now() + Duration::from_secs((1u64 << n.min(5)).min(30)),
            }
        };
        tokio::time::sleep_until(wake.into()).await;
        let Some(this) = weak.upgrade() else { return };
        // The lease lock is held only to read and to replace the lease, never across a Vault
        // call: every KMS call checks the lease (`ensure`) and must not wait for the renewer.
        let current = this.lease.lock().await.as_ref().map(RenewalInput::of);
        let renewed = match &current {
            Some(current) => match this.renew(current).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "Vault token renewal failed; logging in again");
                    None
                }
            },
            None => None,
        };
        let (fresh, renewal) = match renewed {
            Some(r) => (Ok(r), true),
            None => (this.fetch_login().await, false),
        };
        let mut lease = this.lease.lock().await;
        match fresh {
            Ok(fresh) => {
                failures = 0;
                // A login after a refused call may have replaced the lease meanwhile: keep that
                // newer one.
                let replaced = lease.as_ref().map(|l| l.obtained) != current.map(|c| c.obtained);
                if replaced {
                    continue;
                }
                if let Err(e) = this.install(&fresh.token) {
                    error!(error = %format!("{e:#}"), "cannot build a Vault client for the new token; the current token stays in use");
                    continue;
                }
                if renewal {
                    info!(ttl_secs = fresh.ttl.as_secs(), "Vault token renewed");
                }
                *lease = Some(fresh);
            }
            Err(e) => {
                failures += 1;
                error!(error = %format!("{e:#}"), failures, "Vault AppRole re-login failed; the current token stays in use until it expires");
            }
        }
    }
}

/// What renewing a lease needs, copied out so the lease lock is not held during the call.
struct RenewalInput {
    token: Zeroizing<String>,
    obtained: Instant,
    login_ttl: Duration,
    renewable: bool,
}

impl RenewalInput {
    fn of(lease: &Lease) -> Self {
        Self {
            token: lease.token.clone(),
            obtained: lease.obtained,
            login_ttl: lease.login_ttl,
            renewable: lease.renewable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Vault that accepts connections and never answers.
    async fn silent_vault() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        addr
    }

    /// Issue 17, item 9: while the renewer waits on Vault, KMS calls (which check the lease
    /// first) are not held up: the renewer no longer keeps the lease lock across the call.
    #[tokio::test]
    async fn kms_calls_do_not_wait_for_a_renewal_in_flight() {
        std::env::set_var("KAPSULE_TEST_APPROLE_ROLE", "role");
        std::env::set_var("KAPSULE_TEST_APPROLE_SECRET", "secret");
        let vault: VaultKmsConfig = serde_norway::from_str(&format!(
            "address: {}\ntoken_env: KAPSULE_TEST_UNSET\ntimeout_ms: 3000\n",
            silent_vault().await
        ))
        .unwrap();
        let auth: VaultAuthConfig = serde_norway::from_str(
            "method: approle\nrole_id_env: KAPSULE_TEST_APPROLE_ROLE\nsecret_id_env: KAPSULE_TEST_APPROLE_SECRET\n",
        )
        .unwrap();
        let client = Arc::new(RwLock::new(Arc::new(build_client(&vault, "t0").unwrap())));
        let approle = AppRole::new(auth, vault, client);
        // A usable lease already due for renewal: 50 s into 60 s.
        *approle.lease.lock().await = Some(Lease {
            token: Zeroizing::new("t0".into()),
            obtained: Instant::now() - Duration::from_secs(50),
            ttl: Duration::from_secs(60),
            login_ttl: Duration::from_secs(60),
            renewable: true,
        });
        approle.start_renewer();
        // Let the renewer reach its (never answered) renew-self call.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), approle.ensure())
            .await
            .expect("ensure returns")
            .unwrap();
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "a KMS call waited {took:?} for the renewer's Vault call"
        );
    }
}
