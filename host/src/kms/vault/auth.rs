//! Vault authentication beyond static tokens: AppRole login, renewal before expiry, re-login.
//!
//! `kms.vault.auth: { method: approle, role_id_file | role_id_env, secret_id_file | secret_id_env }`.
//! The first KMS call logs in (`POST auth/{mount}/login`). A background task then renews the
//! token (`POST auth/token/renew-self`) once two thirds of its lease have passed. When renewal
//! fails, or the renewed lease comes back shorter than half the login lease (the token is close
//! to its `token_max_ttl`), it logs in again, so a new token is in force before the old one
//! expires. The role id and secret id are read from their files or variables at every login (a
//! rotated secret id on disk is picked up); neither they nor any token are ever logged.
//!
//! Logins are a resource clients must not be able to spend:
//! - **Only a bad token causes a login.** A call Vault refuses with 403 asks Vault about the
//!   token itself (`GET auth/token/lookup-self`, granted by Vault's `default` policy). A token
//!   that is still valid means the refusal is about the path — a key outside the role's grant —
//!   and the caller reports a permission error for that key id; only a token Vault no longer
//!   knows leads to a login ([`AppRole::relogin_if_current`]).
//! - **One login at a time, for one token.** Logins driven by calls (no usable token, a refused
//!   token) hold the lease lock, and a re-login asked for a token that has already been replaced
//!   does nothing: concurrent 403s cost one login.
//! - **The renewer never holds the lease lock across a Vault call.** Every KMS call checks the
//!   lease first ([`AppRole::ensure`]), so a renewal or scheduled login waiting on a slow Vault
//!   must not hold calls up while the token in force is still good. The renewer copies what it
//!   needs out of the lease, calls Vault unlocked, and installs the result only if no one
//!   replaced the token meanwhile (otherwise a fresh token it got is revoked, unused).
//! - **Rate-limited.** A login driven by a refused token comes at least [`MIN_LOGIN_INTERVAL`]
//!   after the last successful one, unless the secret id changed since; logins the lease
//!   schedule drives (renewal run out, no usable token) are not limited.
//! - **Failed logins back off** ([`FAILED_LOGIN_BACKOFF`]: 1 min, 5 min, then 16 min between
//!   attempts). OpenBao and Vault lock an AppRole out for 15 minutes after 5 failed logins, and
//!   during the lockout even a valid secret id is refused, so Kapsule spends at most 3 failed
//!   attempts per lockout window on one secret id. A *different* secret id on disk (an operator
//!   put a fresh one in place) is tried at once.
//! - **The replaced token is revoked** (`POST auth/token/revoke-self` with the old token) after
//!   every successful re-login, so tokens do not pile up until their TTL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::bail;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};
use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::{build_client, classify, KmsErrorKind, VaultKmsConfig};
use crate::kms::secret::SecretSource;

/// Least time between two successful logins, unless the token in force has expired.
pub(super) const MIN_LOGIN_INTERVAL: Duration = Duration::from_secs(10);
/// Waits after the 1st, 2nd and every further consecutive failed login with the same secret id
/// (refused by Vault, not unreachable): at most 3 failures per 15-minute lockout window.
pub(super) const FAILED_LOGIN_BACKOFF: [Duration; 3] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(960),
];
/// Waits after logins that failed because Vault could not be reached (these do not count
/// towards Vault's lockout): 1 s doubling up to 30 s.
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(30);

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
        self.role_id().validate(path, problems);
        self.secret_id().validate(path, problems);
        if self.mount.is_empty() || self.mount.starts_with('/') || self.mount.ends_with('/') {
            problems.push(format!(
                "{path}.mount: '{}' must be a non-empty path without leading or trailing '/'",
                self.mount
            ));
        }
    }

    /// Where the role id comes from.
    fn role_id(&self) -> SecretSource<'_> {
        SecretSource {
            what: "AppRole role id",
            key: "role_id",
            env: self.role_id_env.as_deref(),
            file: self.role_id_file.as_deref(),
            default_env: None,
            hint: "",
        }
    }

    /// Where the secret id comes from (re-read at every login).
    fn secret_id(&self) -> SecretSource<'_> {
        SecretSource {
            what: "AppRole secret id",
            key: "secret_id",
            env: self.secret_id_env.as_deref(),
            file: self.secret_id_file.as_deref(),
            default_env: None,
            hint: "",
        }
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
    /// Bumped each time a new token is installed (see [`AppRole::generation`]).
    generation: AtomicU64,
    /// When the next login may be attempted, and why not before.
    throttle: Mutex<Throttle>,
}

/// Login rate limit and failure backoff (see the module docs).
#[derive(Default)]
struct Throttle {
    /// When the last login succeeded, and the SHA-256 of the secret id it used.
    last_success: Option<(Instant, [u8; 32])>,
    /// Consecutive logins Vault refused with the secret id in `failed_secret`.
    refused: u32,
    /// Consecutive logins that could not reach Vault.
    unreachable: u32,
    /// No login before this instant (unless the secret id changed since `failed_secret`).
    not_before: Option<Instant>,
    /// SHA-256 of the secret id of the last refused login.
    failed_secret: Option<[u8; 32]>,
}

/// What the token in force is, as far as Vault says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenState {
    /// Vault knows the token: a 403 with it is about the path.
    Valid,
    /// Vault refused the token itself (revoked, expired, unknown).
    Invalid,
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
            generation: AtomicU64::new(0),
            throttle: Mutex::new(Throttle::default()),
        })
    }

    /// Which token is in force: compare before and after a call to tell whether a refusal was
    /// about the token the call used or one already replaced.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Makes sure a usable token is in force, logging in when there is none (first call, or
    /// after renewal and re-login both failed for longer than the lease).
    pub(super) async fn ensure(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut lease = self.lease.lock().await;
        if lease.as_ref().is_some_and(Lease::usable) {
            return Ok(());
        }
        self.replace(&mut lease, false).await?;
        drop(lease);
        self.start_renewer();
        Ok(())
    }

    /// Asks Vault whether the token of generation `seen` is still good
    /// (`auth/token/lookup-self`). A token already replaced counts as valid: the caller retries
    /// with the new one.
    pub(super) async fn check_token(&self, seen: u64) -> anyhow::Result<TokenState> {
        if self.generation() != seen {
            return Ok(TokenState::Valid);
        }
        let client = self.client.read().clone();
        let timeout = Duration::from_millis(self.vault.timeout_ms);
        match tokio::time::timeout(timeout, vaultrs::token::lookup_self(client.as_ref())).await {
            Err(_) => bail!(
                "token lookup: no answer within {} ms",
                self.vault.timeout_ms
            ),
            Ok(Ok(_)) => Ok(TokenState::Valid),
            Ok(Err(e)) => match classify(&e) {
                (KmsErrorKind::PermissionDenied, _) => Ok(TokenState::Invalid),
                (_, msg) => bail!("token lookup failed: {msg}"),
            },
        }
    }

    /// Logs in again because Vault refused the token of generation `seen` itself; does nothing
    /// when that token was already replaced (a concurrent caller logged in). Subject to the
    /// login rate limit and failure backoff.
    pub(super) async fn relogin_if_current(self: &Arc<Self>, seen: u64) -> anyhow::Result<()> {
        let mut lease = self.lease.lock().await;
        if self.generation() != seen {
            return Ok(());
        }
        // Driven by client traffic: rate-limited.
        self.replace(&mut lease, true).await
    }

    fn install(&self, token: &str) -> anyhow::Result<()> {
        let c = build_client(&self.vault, token)?;
        *self.client.write() = Arc::new(c);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Logs in (if the throttle allows), installs the new token and revokes the one it replaces.
    /// `rate_limited`: the login is driven by client traffic (a refused token), so it waits
    /// [`MIN_LOGIN_INTERVAL`] after the last one; logins the lease schedule drives do not.
    async fn replace(&self, lease: &mut Option<Lease>, rate_limited: bool) -> anyhow::Result<()> {
        let fresh = self.login(rate_limited).await?;
        self.adopt(lease, fresh)
    }

    /// Installs the token of a fresh login as the one in force (`lease` is the locked lease)
    /// and revokes the token it replaces.
    fn adopt(&self, lease: &mut Option<Lease>, fresh: Lease) -> anyhow::Result<()> {
        self.install(&fresh.token)?;
        if let Some(old) = lease.replace(fresh) {
            self.revoke_later(old);
        }
        Ok(())
    }

    /// Revokes a replaced token in the background (`auth/token/revoke-self`). An expired token
    /// is already gone and is skipped.
    fn revoke_later(&self, old: Lease) {
        if !old.usable() {
            return;
        }
        let client = match build_client(&self.vault, &old.token) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot revoke the replaced Vault token");
                return;
            }
        };
        let timeout = Duration::from_millis(self.vault.timeout_ms);
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, vaultrs::token::revoke_self(&client)).await {
                Ok(Ok(())) => info!("revoked the replaced Vault token"),
                // Revoked or expired meanwhile: nothing left to do.
                Ok(Err(e)) if classify(&e).0 == KmsErrorKind::PermissionDenied => {}
                Ok(Err(e)) => {
                    warn!(error = %classify(&e).1, "cannot revoke the replaced Vault token; it stays valid until its TTL")
                }
                Err(_) => warn!(
                    "revoking the replaced Vault token timed out; it stays valid until its TTL"
                ),
            }
        });
    }

    /// One throttled AppRole login (see the module docs): the new lease, not yet installed
    /// ([`AppRole::adopt`] does that).
    async fn login(&self, rate_limited: bool) -> anyhow::Result<Lease> {
        let role_id = self.auth.role_id().read()?;
        let secret_id = self.auth.secret_id().read()?;
        let secret_digest: [u8; 32] = Sha256::digest(secret_id.as_bytes()).into();
        {
            let t = self.throttle.lock();
            let now = Instant::now();
            let new_secret = t.failed_secret.is_some_and(|f| f != secret_digest);
            if let Some(at) = t.not_before.filter(|at| *at > now && !new_secret) {
                bail!(
                    "AppRole login held back for {} s after {} failed login(s) (Vault locks an AppRole \
                     out for 15 minutes after 5 failed logins, which would also refuse a fresh secret id); \
                     put a valid secret id in place to try at once",
                    (at - now).as_secs() + 1,
                    t.refused + t.unreachable
                );
            }
            // A secret id other than the last one that worked is tried at once.
            let last = t
                .last_success
                .filter(|(_, s)| rate_limited && *s == secret_digest);
            if let Some((last, _)) = last {
                if now < last + MIN_LOGIN_INTERVAL {
                    bail!(
                        "AppRole login rate-limited: the last login was {} ms ago (at most one per {} s)",
                        (now - last).as_millis(),
                        MIN_LOGIN_INTERVAL.as_secs()
                    );
                }
            }
        }
        // The login call itself carries no token.
        let anon = build_client(&self.vault, "")?;
        let timeout = Duration::from_millis(self.vault.timeout_ms);
        let answer = tokio::time::timeout(
            timeout,
            vaultrs::auth::approle::login(&anon, &self.auth.mount, &role_id, &secret_id),
        )
        .await;
        let info = match answer {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let (kind, msg) = classify(&e);
                let refused = kind != KmsErrorKind::Transient;
                let wait = self.login_failed(refused, secret_digest);
                bail!(
                    "AppRole login at {}/v1/auth/{}/login failed: {msg} (check the role id, secret id and that the secret id has not expired or been used up; next attempt in {} s)",
                    self.vault.address,
                    self.auth.mount,
                    wait.as_secs()
                );
            }
            Err(_) => {
                let wait = self.login_failed(false, secret_digest);
                bail!(
                    "AppRole login: no answer within {} ms (next attempt in {} s)",
                    self.vault.timeout_ms,
                    wait.as_secs()
                );
            }
        };
        {
            let mut t = self.throttle.lock();
            *t = Throttle {
                last_success: Some((Instant::now(), secret_digest)),
                ..Throttle::default()
            };
        }
        let lease = Lease::from_auth(info, None);
        info!(
            ttl_secs = lease.ttl.as_secs(),
            renewable = lease.renewable,
            "Vault AppRole login succeeded"
        );
        Ok(lease)
    }

    /// Records a failed login and returns how long the next one waits. `refused`: Vault
    /// answered (it counts towards Vault's lockout); otherwise Vault was unreachable.
    fn login_failed(&self, refused: bool, secret: [u8; 32]) -> Duration {
        let mut t = self.throttle.lock();
        // The next login is governed by the backoff, not by the interval after a success.
        t.last_success = None;
        let wait = if refused {
            if t.failed_secret != Some(secret) {
                t.refused = 0;
            }
            t.failed_secret = Some(secret);
            t.refused += 1;
            FAILED_LOGIN_BACKOFF[(t.refused as usize - 1).min(FAILED_LOGIN_BACKOFF.len() - 1)]
        } else {
            t.unreachable += 1;
            Duration::from_secs(1u64 << t.unreachable.min(5)).min(UNREACHABLE_BACKOFF_MAX)
        };
        t.not_before = Some(Instant::now() + wait);
        if refused {
            error!(
                failures = t.refused,
                next_attempt_secs = wait.as_secs(),
                "Vault refused the AppRole login; backing off so the role is not locked out \
                 (after 5 failed logins OpenBao/Vault refuse every secret id of the role for 15 \
                 minutes: put a valid secret id in place and Kapsule tries it at once)"
            );
        }
        wait
    }

    /// Renews the token of `current` (copied out of the lease, which stays unlocked during the
    /// call); `Ok(None)` when it cannot be (not renewable, max TTL near). The renewed lease is
    /// not installed.
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
        // The lease lock is held only to copy the lease out and to install the result, never
        // across a Vault call (see the module docs).
        let (current, seen) = {
            let lease = this.lease.lock().await;
            (lease.as_ref().map(RenewalInput::of), this.generation())
        };
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
        let fresh = match renewed {
            Some(r) => Ok((r, true)),
            None => this.login(false).await.map(|l| (l, false)),
        };
        let mut lease = this.lease.lock().await;
        let (fresh, renewal) = match fresh {
            Ok(f) => f,
            Err(e) => {
                failures += 1;
                error!(error = %format!("{e:#}"), failures, "Vault AppRole re-login failed; the current token stays in use until it expires");
                continue;
            }
        };
        failures = 0;
        if this.generation() != seen {
            // A call logged in meanwhile (its token was refused, or none was usable): keep that
            // newer token; a token this loop logged in for is not needed.
            if !renewal {
                this.revoke_later(fresh);
            }
            continue;
        }
        let installed = if renewal {
            // Same token, longer lease: nothing to revoke.
            this.install(&fresh.token).map(|()| {
                info!(ttl_secs = fresh.ttl.as_secs(), "Vault token renewed");
                *lease = Some(fresh);
            })
        } else {
            this.adopt(&mut lease, fresh)
        };
        if let Err(e) = installed {
            failures += 1;
            error!(error = %format!("{e:#}"), failures, "cannot build a Vault client for the new token; the current token stays in use until it expires");
        }
    }
}

/// What renewing the lease needs, copied out so the lease lock is not held during the call.
struct RenewalInput {
    token: Zeroizing<String>,
    login_ttl: Duration,
    renewable: bool,
}

impl RenewalInput {
    fn of(lease: &Lease) -> Self {
        Self {
            token: lease.token.clone(),
            login_ttl: lease.login_ttl,
            renewable: lease.renewable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, item 9: while the renewer waits on a Vault that does not answer, KMS calls
    /// (which check the lease first, [`AppRole::ensure`]) go on with the token in force: the
    /// renewer does not hold the lease lock across its Vault call.
    #[tokio::test]
    async fn kms_calls_do_not_wait_for_a_renewal_in_flight() {
        std::env::set_var("KAPSULE_TEST_APPROLE_ROLE", "role");
        std::env::set_var("KAPSULE_TEST_APPROLE_SECRET", "secret");
        let (address, server) = super::super::tests::silent_vault().await;
        let vault: VaultKmsConfig = serde_norway::from_str(&format!(
            "address: {address}\ntoken_env: KAPSULE_TEST_UNSET_TOKEN\ntimeout_ms: 3000\n"
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
        // Let the renewer reach its renew-self call, which Vault never answers (3 s timeout).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), approle.ensure())
            .await
            .expect("ensure returns")
            .expect("the token in force is usable");
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "a KMS call waited {took:?} for the renewer's Vault call"
        );
        assert_eq!(
            approle.generation(),
            0,
            "the token in force was not replaced"
        );
        server.abort();
    }
}
