//! Local, file-based KMS: the embedded default for demos and users without Vault.
//!
//! KEKs live in one JSON file (`key_file`). Each KEK version is 32 random bytes stored encrypted
//! (AES-256-GCM) under a master key that comes from an environment variable or a separate file,
//! so the file alone never reveals a KEK. Versions work like Vault transit: new DEKs are wrapped
//! with the latest version, EDEKs of older versions stay decryptable.
//!
//! From each KEK version two independent subkeys are derived with HKDF-SHA256: one wraps DEKs
//! (AES-256-GCM, random 96-bit nonce, AAD = key id), one is the PRF behind [`Kms::derive_key`].
//!
//! File safety (format `kapsule-local-kms/v2`):
//! - **Integrity.** An HMAC-SHA256 under a key derived from the master key covers the whole file
//!   (every key, every version, and a `generation` counter bumped on each write). A file with a
//!   dropped, added or edited entry fails to load with an "integrity check failed" error. A
//!   running instance also refuses a file whose generation went backwards or that lost a version
//!   it had loaded (a restored old copy). A v1 file (no MAC) is upgraded in place on open.
//! - **Atomic, exclusive writes.** The file is rewritten as a temporary file with a random name
//!   opened with `O_CREAT|O_EXCL|O_NOFOLLOW` (mode 0600), fsynced, renamed over the key file, and
//!   the directory is fsynced so the rename survives a crash.
//! - **No symlinks.** The key file, its temporary file and its lock file are opened with
//!   `O_NOFOLLOW`: a symbolic link in their place is an error, never followed.
//! - **Cross-process lock.** Create and rotate hold an exclusive `flock` on `.<key_file>.lock`
//!   for the whole read-modify-write, so the CLI and a running proxy never lose each other's keys.
//!
//! Instances reload the file when they meet a key id or version they do not know, so keys created
//! by the CLI ([`LocalKms::create_key`], [`LocalKms::rotate_key`]) are picked up by a running
//! proxy.
//!
//! Layout: `config` holds the settings and the master key they name, `file` the key file's
//! format and its authenticated read-modify-write; this module keeps the in-memory KEKs and the
//! [`Kms`] operations on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::bail;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    DataKey, DeriveRequest, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN,
};

mod config;
mod file;

use config::{default_max_auto_created_keys, default_max_auto_created_keys_per_principal};
pub use config::{parse_master_key, LocalKmsConfig, DEFAULT_MASTER_KEY_ENV};
#[cfg(test)]
use file::{FILE_FORMAT, LEGACY_FORMAT};

const EDEK_PREFIX: &str = "local:v";

/// One unwrapped KEK version.
struct KekVersion {
    wrap_key: SecretKey,
    prf_key: SecretKey,
}

/// File-based KMS (see the module docs).
pub struct LocalKms {
    key_file: PathBuf,
    master: SecretKey,
    auto_create: bool,
    max_auto_created: usize,
    max_auto_created_per_principal: usize,
    /// KEKs auto-created (or being created) by this process, per requester label
    /// ([`super::requester`]).
    auto_created_by: Mutex<HashMap<std::sync::Arc<str>, usize>>,
    keys: Mutex<HashMap<String, Vec<(u32, KekVersion)>>>,
    /// Generation of the file last loaded (rollback detection).
    generation: Mutex<u64>,
    /// Serialises read-modify-write of the file within this process (the flock covers others).
    write_lock: Mutex<()>,
    /// Serialises reloads (read the file, compare, apply): without it a reload that read the
    /// file just before another thread's write could apply after that thread's reload and see
    /// its own, older, snapshot as a rollback.
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("key_file", &self.key_file)
            .field("auto_create", &self.auto_create)
            .finish_non_exhaustive()
    }
}

/// 32 bytes of HKDF-SHA256 from `ikm`.
fn hkdf32(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; DEK_LEN]);
    hk.expand_multi_info(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn valid_key_id(key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() || key_id.len() > 255 || key_id.chars().any(|c| c.is_control()) {
        return Err(KmsError::new(
            KmsErrorKind::Other,
            key_id,
            "invalid key id: must be 1-255 characters without control characters",
        ));
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LocalKms {
    /// Opens (or prepares to create) the key file and loads every KEK into memory.
    ///
    /// Fails when the master key is missing or malformed, the file is unreadable or corrupt, or
    /// the master key does not match the file.
    pub fn open(config: &LocalKmsConfig) -> anyhow::Result<Self> {
        let master = config.load_master_key()?;
        let kms = Self::new(&config.key_file, master, config.auto_create_keys);
        Self {
            max_auto_created: config.max_auto_created_keys,
            max_auto_created_per_principal: config.max_auto_created_keys_per_principal,
            ..kms
        }
        .loaded()
    }

    fn new(key_file: &Path, master: SecretKey, auto_create: bool) -> Self {
        Self {
            key_file: key_file.to_owned(),
            master,
            auto_create,
            max_auto_created: default_max_auto_created_keys(),
            max_auto_created_per_principal: default_max_auto_created_keys_per_principal(),
            auto_created_by: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            generation: Mutex::new(0),
            write_lock: Mutex::new(()),
            reload_lock: Mutex::new(()),
        }
    }

    /// Opens with an explicit master key (tests, CLI).
    pub fn open_with_master_key(
        key_file: &Path,
        master: SecretKey,
        auto_create: bool,
    ) -> anyhow::Result<Self> {
        Self::new(key_file, master, auto_create).loaded()
    }

    /// Creates KEK `key_id` (version 1) unless it exists. Returns true when it was created.
    pub fn create_key(&self, key_id: &str) -> anyhow::Result<bool> {
        Ok(self.add_version(key_id, true, false)?.1)
    }

    /// Adds a new version to existing KEK `key_id`; new DEKs use it, old EDEKs stay readable.
    /// Returns the new version.
    pub fn rotate_key(&self, key_id: &str) -> anyhow::Result<u32> {
        self.reload()?;
        if !self.keys.lock().contains_key(key_id) {
            bail!("key {key_id:?} does not exist; create it first");
        }
        Ok(self.add_version(key_id, false, false)?.0)
    }

    /// Ids of all KEKs with their latest version, sorted.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        let keys = self.keys.lock();
        let mut out: Vec<KeyInfo> = keys
            .iter()
            .map(|(id, v)| KeyInfo::new(id, v.last().map(|(n, _)| *n).unwrap_or(0)))
            .collect();
        out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        out
    }

    /// Runs `f` on version `version` (latest when `None`) of `key_id`, reloading the file once on
    /// a miss, and creating the key when `create` and auto-creation is on.
    fn with_version<T>(
        &self,
        key_id: &str,
        version: Option<u32>,
        create: bool,
        f: impl Fn(u32, &KekVersion) -> T,
    ) -> Result<T, KmsError> {
        valid_key_id(key_id)?;
        let lookup = |keys: &HashMap<String, Vec<(u32, KekVersion)>>| {
            let versions = keys.get(key_id)?;
            let (n, k) = match version {
                None => versions.last()?,
                Some(v) => versions.iter().find(|(n, _)| *n == v)?,
            };
            Some(f(*n, k))
        };
        if let Some(r) = lookup(&self.keys.lock()) {
            return Ok(r);
        }
        let other = |e: anyhow::Error| KmsError::new(KmsErrorKind::Other, key_id, format!("{e:#}"));
        self.reload().map_err(other)?;
        if let Some(r) = lookup(&self.keys.lock()) {
            return Ok(r);
        }
        let exists = self.keys.lock().contains_key(key_id);
        let full = self.keys.lock().len() >= self.max_auto_created;
        if create && self.auto_create && !exists && full {
            return Err(KmsError::new(
                KmsErrorKind::UnknownKey,
                key_id,
                format!(
                    "key not found and not auto-created: the key file already holds \
                     {} keys (kms.max_auto_created_keys); create it with `kapsule keys create`",
                    self.max_auto_created
                ),
            ));
        }
        if create && self.auto_create && !exists {
            self.auto_create_for_requester(key_id)?;
            if let Some(r) = lookup(&self.keys.lock()) {
                return Ok(r);
            }
        }
        Err(match (exists, version) {
            (true, Some(v)) => KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                format!("key version {v} does not exist in the local key file"),
            ),
            _ => KmsError::new(
                KmsErrorKind::UnknownKey,
                key_id,
                format!(
                    "key not found in {} (create it with `kapsule keys create {}` or set \
                     kms.auto_create_keys: true)",
                    self.key_file.display(),
                    key_id.escape_debug()
                ),
            ),
        })
    }
}

impl LocalKms {
    /// Auto-creates KEK `key_id` for the current requester ([`super::requester`]) unless that
    /// requester has used up `max_auto_created_keys_per_principal`. Calls made for no client
    /// (outside a requester scope) are bounded by `max_auto_created_keys` only.
    fn auto_create_for_requester(&self, key_id: &str) -> Result<(), KmsError> {
        let Some(who) = super::requester::current() else {
            return match self.add_version(key_id, true, true) {
                Ok(_) => Ok(()),
                Err(e) => Err(KmsError::new(KmsErrorKind::Other, key_id, format!("{e:#}"))),
            };
        };
        {
            let mut by = self.auto_created_by.lock();
            let n = by.entry(who.clone()).or_insert(0);
            if *n >= self.max_auto_created_per_principal {
                return Err(KmsError::new(
                    KmsErrorKind::UnknownKey,
                    key_id,
                    format!(
                        "key not found and not auto-created: {} already had {} keys auto-created \
                         (kms.max_auto_created_keys_per_principal); create it with `kapsule keys \
                         create`",
                        who.escape_debug(),
                        self.max_auto_created_per_principal
                    ),
                ));
            }
            // Reserved now, so concurrent creations by the same requester cannot overshoot.
            *n += 1;
        }
        let added = self.add_version(key_id, true, true);
        if !matches!(added, Ok((_, true))) {
            if let Some(n) = self.auto_created_by.lock().get_mut(&who) {
                *n = n.saturating_sub(1);
            }
        }
        match added {
            Ok((_, true)) => {
                tracing::info!(key_id = ?key_id, requester = %who.escape_debug(), "auto-created a KEK in the local key file");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(KmsError::new(KmsErrorKind::Other, key_id, format!("{e:#}"))),
        }
    }
}

fn parse_local_edek(edek: &[u8]) -> Option<(u32, Vec<u8>)> {
    let s = std::str::from_utf8(edek).ok()?;
    let rest = s.strip_prefix(EDEK_PREFIX)?;
    let (ver, b64) = rest.split_once(':')?;
    let ver: u32 = ver.parse().ok()?;
    let raw = B64.decode(b64).ok()?;
    (raw.len() == 12 + DEK_LEN + 16).then_some((ver, raw))
}

#[async_trait]
impl Kms for LocalKms {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn generate_data_key(&self, key_id: &str) -> Result<DataKey, KmsError> {
        let dek = super::random_dek();
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let (version, ct) = self.with_version(key_id, None, true, |n, k| {
            let cipher = Aes256Gcm::new_from_slice(k.wrap_key.as_ref()).expect("32-byte key");
            let ct = cipher.encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: dek.as_ref(),
                    aad: key_id.as_bytes(),
                },
            );
            (n, ct)
        })?;
        let ct = ct.map_err(|_| KmsError::new(KmsErrorKind::Other, key_id, "AES-GCM failed"))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        Ok(DataKey {
            plaintext: dek,
            edek: format!("{EDEK_PREFIX}{version}:{}", B64.encode(&raw)).into_bytes(),
            kek_version: version,
        })
    }

    async fn decrypt_data_key(&self, key_id: &str, edek: &[u8]) -> Result<SecretKey, KmsError> {
        let (version, raw) = parse_local_edek(edek).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "EDEK is not a local KMS EDEK (local:v<N>:<base64>)",
            )
        })?;
        let pt = self.with_version(key_id, Some(version), false, |_, k| {
            let cipher = Aes256Gcm::new_from_slice(k.wrap_key.as_ref()).expect("32-byte key");
            cipher
                .decrypt(
                    Nonce::from_slice(&raw[..12]),
                    Payload {
                        msg: &raw[12..],
                        aad: key_id.as_bytes(),
                    },
                )
                .map(Zeroizing::new)
        })?;
        let pt = pt.map_err(|_| {
            KmsError::new(
                KmsErrorKind::InvalidCiphertext,
                key_id,
                "EDEK does not authenticate under this key (wrong key id or corrupted EDEK)",
            )
        })?;
        let mut out = Zeroizing::new([0u8; DEK_LEN]);
        out.copy_from_slice(&pt);
        Ok(out)
    }

    async fn key_info(&self, key_id: &str) -> Result<KeyInfo, KmsError> {
        self.with_version(key_id, None, false, |n, _| KeyInfo::new(key_id, n))
    }

    async fn derive_key(&self, request: DeriveRequest<'_>) -> Result<DerivedKey, KmsError> {
        let latest = request.version.is_none();
        self.with_version(request.key_id, request.version, latest, |n, k| DerivedKey {
            material: hkdf32(
                k.prf_key.as_ref(),
                b"kapsule local derive",
                &[request.context],
            ),
            kek_version: n,
        })
    }
}

#[cfg(test)]
mod tests;
