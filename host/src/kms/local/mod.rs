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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use config::{default_max_auto_created_keys, default_max_auto_created_keys_per_principal};
pub use config::{parse_master_key, LocalKmsConfig, DEFAULT_MASTER_KEY_ENV};

use super::keyfile::{read_no_follow, write_atomic, FileLock};
use super::{DataKey, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN};

const FILE_FORMAT: &str = "kapsule-local-kms/v2";
/// The pre-MAC format: still read, upgraded to [`FILE_FORMAT`] on open.
const LEGACY_FORMAT: &str = "kapsule-local-kms/v1";
const EDEK_PREFIX: &str = "local:v";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    /// base64 of a 16-byte value derived from the master key, to detect a wrong master key.
    master_key_check: String,
    /// Bumped on every write (v2); a running instance refuses a file whose generation went back.
    #[serde(default)]
    generation: u64,
    keys: std::collections::BTreeMap<String, KeyEntry>,
    /// base64 HMAC-SHA256 (key derived from the master key) over the file with `mac` unset (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    versions: Vec<VersionEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionEntry {
    version: u32,
    created_at: u64,
    /// base64(nonce 12 || AES-256-GCM(master, KEK material) 32 || tag 16).
    wrapped: String,
}

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

fn hkdf32(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; DEK_LEN]);
    hk.expand_multi_info(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn master_check(master: &SecretKey) -> String {
    let k = hkdf32(
        master.as_ref(),
        b"kapsule local kms",
        &[b"master key check v1"],
    );
    B64.encode(&k[..16])
}

fn file_mac(master: &SecretKey, file: &KeyFile) -> anyhow::Result<ring::hmac::Tag> {
    let key = hkdf32(master.as_ref(), b"kapsule local kms", &[b"file mac v2"]);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref());
    let unsigned = KeyFile {
        format: file.format.clone(),
        master_key_check: file.master_key_check.clone(),
        generation: file.generation,
        keys: Default::default(),
        mac: None,
    };
    // Canonical input: the header, then every key and version in sorted (BTreeMap) order.
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(&serde_json::to_vec(&unsigned)?);
    ctx.update(&serde_json::to_vec(&file.keys)?);
    Ok(ctx.sign())
}

fn kek_aad(key_id: &str, version: u32) -> Vec<u8> {
    let mut aad = b"kapsule-local-kek/v1\0".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
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

    /// Loads the file, upgrading a v1 file (no MAC) to v2 in place.
    fn loaded(self) -> anyhow::Result<Self> {
        if self.reload()? {
            let _guard = self.write_lock.lock();
            let _lock = FileLock::acquire(&self.key_file)?;
            if let Some(mut file) = self.read_file()? {
                if file.format == LEGACY_FORMAT {
                    file.format = FILE_FORMAT.to_owned();
                    match self.write_file(&mut file) {
                        Ok(()) => tracing::info!(
                            key_file = %self.key_file.display(),
                            "upgraded the local key file to {FILE_FORMAT} (integrity MAC added)"
                        ),
                        Err(e) => tracing::warn!(
                            key_file = %self.key_file.display(), error = %format!("{e:#}"),
                            "cannot upgrade the local key file to {FILE_FORMAT}: it stays without an integrity MAC"
                        ),
                    }
                }
            }
        }
        self.reload()?;
        Ok(self)
    }

    /// Opens with an explicit master key (tests, CLI).
    pub fn open_with_master_key(
        key_file: &Path,
        master: SecretKey,
        auto_create: bool,
    ) -> anyhow::Result<Self> {
        Self::new(key_file, master, auto_create).loaded()
    }

    /// Reads, parses and authenticates the key file. `Ok(None)` when it does not exist yet.
    fn read_file(&self) -> anyhow::Result<Option<KeyFile>> {
        let path = self.key_file.display();
        let Some(text) = read_no_follow(&self.key_file)? else {
            return Ok(None);
        };
        let file: KeyFile =
            serde_json::from_str(&text).with_context(|| format!("parsing key file {path}"))?;
        if file.format != FILE_FORMAT && file.format != LEGACY_FORMAT {
            bail!(
                "key file {path}: unsupported format {:?} (expected {FILE_FORMAT})",
                file.format
            );
        }
        if file.master_key_check != master_check(&self.master) {
            bail!(
                "key file {path}: the master key does not match this file (wrong KAPSULE_MASTER_KEY?)"
            );
        }
        if file.format == FILE_FORMAT {
            let tag = file
                .mac
                .as_deref()
                .and_then(|m| B64.decode(m).ok())
                .unwrap_or_default();
            let expected = file_mac(&self.master, &file)?;
            if !crate::constant_time::eq(&tag, expected.as_ref()) {
                bail!(
                    "key file {path}: integrity check failed (a key or version was added, removed \
                     or edited outside Kapsule); restore the file from a backup"
                );
            }
        } else if *self.generation.lock() > 0 {
            bail!(
                "key file {path}: was replaced by an older {LEGACY_FORMAT} file without integrity \
                 MAC; restore the latest key file"
            );
        }
        Ok(Some(file))
    }

    /// Re-reads the key file and replaces the in-memory KEKs. Returns true when the file is in
    /// the legacy v1 format.
    ///
    /// Fails, keeping the keys already loaded, when the file does not authenticate, or when it
    /// went back in time: a lower generation than the one loaded, or a KEK version missing that
    /// this instance had loaded (a rolled-back or truncated file).
    pub fn reload(&self) -> anyhow::Result<bool> {
        let _serial = self.reload_lock.lock();
        let path = self.key_file.display();
        let Some(file) = self.read_file()? else {
            if !self.keys.lock().is_empty() {
                bail!(
                    "key file {path} disappeared after keys were loaded from it; restore it \
                     (records under its keys are unreadable without it)"
                );
            }
            return Ok(false);
        };
        let cipher = Aes256Gcm::new_from_slice(self.master.as_ref()).expect("32-byte key");
        let mut keys = HashMap::new();
        for (id, entry) in &file.keys {
            let mut versions = Vec::new();
            for v in &entry.versions {
                let raw = B64
                    .decode(&v.wrapped)
                    .with_context(|| format!("key {id:?} v{}: wrapped is not base64", v.version))?;
                if raw.len() != 12 + DEK_LEN + 16 {
                    bail!("key {id:?} v{}: wrapped has wrong length", v.version);
                }
                let material = Zeroizing::new(
                    cipher
                        .decrypt(
                            Nonce::from_slice(&raw[..12]),
                            Payload {
                                msg: &raw[12..],
                                aad: &kek_aad(id, v.version),
                            },
                        )
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "key {id:?} v{}: cannot be unwrapped (file edited?)",
                                v.version
                            )
                        })?,
                );
                versions.push((
                    v.version,
                    KekVersion {
                        wrap_key: hkdf32(&material, b"kapsule local kms", &[b"wrap v1"]),
                        prf_key: hkdf32(&material, b"kapsule local kms", &[b"derive v1"]),
                    },
                ));
            }
            versions.sort_by_key(|(v, _)| *v);
            keys.insert(id.clone(), versions);
        }
        let mut loaded = self.keys.lock();
        let mut generation = self.generation.lock();
        if file.generation < *generation {
            bail!(
                "key file {path} was rolled back: generation {} is older than the loaded {}; \
                 restore the latest key file",
                file.generation,
                *generation
            );
        }
        for (id, versions) in loaded.iter() {
            for (v, _) in versions {
                let present = keys
                    .get(id)
                    .is_some_and(|vs: &Vec<(u32, KekVersion)>| vs.iter().any(|(n, _)| n == v));
                if !present {
                    bail!(
                        "key file {path} lost key {id:?} version {v} that was loaded before (file \
                         rolled back or edited); restore the latest key file"
                    );
                }
            }
        }
        *generation = file.generation;
        *loaded = keys;
        Ok(file.format == LEGACY_FORMAT)
    }

    /// Adds a new KEK version to `key_id` (version 1 when `create_only` and the key is new).
    /// Returns the key's latest version after the call and whether a version was added.
    ///
    /// Holds the in-process write lock and the cross-process file lock for the whole
    /// read-modify-write. `auto` applies the `max_auto_created_keys` limit to new keys.
    fn add_version(
        &self,
        key_id: &str,
        create_only: bool,
        auto: bool,
    ) -> anyhow::Result<(u32, bool)> {
        valid_key_id(key_id).map_err(|e| anyhow::anyhow!(e))?;
        let _guard = self.write_lock.lock();
        let _lock = FileLock::acquire(&self.key_file)?;
        let mut file = self.read_file()?.unwrap_or_else(|| KeyFile {
            format: FILE_FORMAT.to_owned(),
            master_key_check: master_check(&self.master),
            generation: 0,
            keys: Default::default(),
            mac: None,
        });
        if auto && !file.keys.contains_key(key_id) && file.keys.len() >= self.max_auto_created {
            bail!(
                "not auto-creating key {key_id:?}: the key file already holds {} keys \
                 (kms.max_auto_created_keys); create it with `kapsule keys create`",
                file.keys.len()
            );
        }
        let entry = file.keys.entry(key_id.to_owned()).or_default();
        let latest = entry.versions.iter().map(|v| v.version).max().unwrap_or(0);
        if create_only && latest > 0 {
            drop(_lock);
            self.reload()?;
            return Ok((latest, false));
        }
        let version = latest + 1;
        let mut material = Zeroizing::new([0u8; DEK_LEN]);
        rand::rngs::OsRng.fill_bytes(material.as_mut());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new_from_slice(self.master.as_ref()).expect("32-byte key");
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: material.as_ref(),
                    aad: &kek_aad(key_id, version),
                },
            )
            .map_err(|_| anyhow::anyhow!("AES-GCM encryption failed"))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&ct);
        entry.versions.push(VersionEntry {
            version,
            created_at: now_secs(),
            wrapped: B64.encode(&wrapped),
        });
        file.format = FILE_FORMAT.to_owned();
        self.write_file(&mut file)?;
        drop(_lock);
        self.reload()?;
        Ok((version, true))
    }

    /// Bumps the generation, signs and writes `file` (caller holds the locks).
    fn write_file(&self, file: &mut KeyFile) -> anyhow::Result<()> {
        file.generation += 1;
        file.mac = None;
        file.mac = Some(B64.encode(file_mac(&self.master, file)?.as_ref()));
        let text = serde_json::to_string_pretty(file)?;
        write_atomic(&self.key_file, text.as_bytes())
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

    async fn derive_key(
        &self,
        key_id: &str,
        context: &[u8],
        version: Option<u32>,
    ) -> Result<DerivedKey, KmsError> {
        self.with_version(key_id, version, version.is_none(), |n, k| DerivedKey {
            material: hkdf32(k.prf_key.as_ref(), b"kapsule local derive", &[context]),
            kek_version: n,
        })
    }
}

mod config;
#[cfg(test)]
mod tests;
