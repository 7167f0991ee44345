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
//! The file is rewritten atomically (temporary file + rename, mode 0600). Instances reload it when
//! they meet a key id or version they do not know, so keys created by the CLI
//! ([`LocalKms::create_key`], [`LocalKms::rotate_key`]) are picked up by a running proxy. Writers
//! in different processes are not locked against each other: create keys with one process at a
//! time.

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

use super::{DataKey, DerivedKey, KeyInfo, Kms, KmsError, KmsErrorKind, SecretKey, DEK_LEN};

/// Default environment variable holding the master key.
pub const DEFAULT_MASTER_KEY_ENV: &str = "KAPSULE_MASTER_KEY";
const FILE_FORMAT: &str = "kapsule-local-kms/v1";
const EDEK_PREFIX: &str = "local:v";

/// `kms: { type: local, ... }` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKmsConfig {
    /// Path of the KEK file (created when missing).
    pub key_file: PathBuf,
    /// Environment variable holding the master key (base64 or hex of 32 bytes). Default
    /// `KAPSULE_MASTER_KEY` when `master_key_file` is not set either.
    #[serde(default)]
    pub master_key_env: Option<String>,
    /// File holding the master key (base64 or hex of 32 bytes). Exclusive with `master_key_env`.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Create a KEK the first time a DEK is requested for an unknown key id (default false: keys
    /// must be created with `kapsule keys create`).
    #[serde(default)]
    pub auto_create_keys: bool,
}

impl LocalKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.key_file.as_os_str().is_empty() {
            problems.push(format!("{path}.key_file: must not be empty"));
        }
        if self.master_key_env.is_some() && self.master_key_file.is_some() {
            problems.push(format!(
                "{path}: set only one of master_key_env and master_key_file"
            ));
        }
        if let Some(e) = &self.master_key_env {
            if e.is_empty() || e.contains('=') || e.contains('\0') {
                problems.push(format!(
                    "{path}.master_key_env: '{e}' is not a valid environment variable name"
                ));
            }
        }
    }

    fn load_master_key(&self) -> anyhow::Result<SecretKey> {
        let text = Zeroizing::new(match &self.master_key_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading master key file {}", f.display()))?,
            None => {
                let var = self
                    .master_key_env
                    .as_deref()
                    .unwrap_or(DEFAULT_MASTER_KEY_ENV);
                std::env::var(var).with_context(|| {
                    format!(
                        "master key environment variable {var} is not set; set it to 32 random \
                         bytes in base64 (e.g. `openssl rand -base64 32`)"
                    )
                })?
            }
        });
        parse_master_key(text.trim())
    }
}

/// Parses a 32-byte key written as base64 (standard alphabet) or 64 hex digits.
pub fn parse_master_key(text: &str) -> anyhow::Result<SecretKey> {
    let bytes = Zeroizing::new(
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).context("master key: invalid hex")?
        } else {
            B64.decode(text)
                .context("master key: neither 64 hex digits nor valid base64")?
        },
    );
    if bytes.len() != DEK_LEN {
        bail!(
            "master key must be 32 bytes, got {} (generate one with `openssl rand -base64 32`)",
            bytes.len()
        );
    }
    let mut key = Zeroizing::new([0u8; DEK_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    /// base64 of a 16-byte value derived from the master key, to detect a wrong master key.
    master_key_check: String,
    keys: std::collections::BTreeMap<String, KeyEntry>,
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
    keys: Mutex<HashMap<String, Vec<(u32, KekVersion)>>>,
    /// Serialises read-modify-write of the file within this process.
    write_lock: Mutex<()>,
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
        let kms = Self {
            key_file: config.key_file.clone(),
            master,
            auto_create: config.auto_create_keys,
            keys: Mutex::new(HashMap::new()),
            write_lock: Mutex::new(()),
        };
        kms.reload()?;
        Ok(kms)
    }

    /// Opens with an explicit master key (tests, CLI).
    pub fn open_with_master_key(
        key_file: &Path,
        master: SecretKey,
        auto_create: bool,
    ) -> anyhow::Result<Self> {
        let kms = Self {
            key_file: key_file.to_owned(),
            master,
            auto_create,
            keys: Mutex::new(HashMap::new()),
            write_lock: Mutex::new(()),
        };
        kms.reload()?;
        Ok(kms)
    }

    fn read_file(&self) -> anyhow::Result<Option<KeyFile>> {
        let text = match std::fs::read_to_string(&self.key_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", self.key_file.display()))
            }
        };
        let file: KeyFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing key file {}", self.key_file.display()))?;
        if file.format != FILE_FORMAT {
            bail!(
                "key file {}: unsupported format '{}' (expected {FILE_FORMAT})",
                self.key_file.display(),
                file.format
            );
        }
        if file.master_key_check != master_check(&self.master) {
            bail!(
                "key file {}: the master key does not match this file (wrong KAPSULE_MASTER_KEY?)",
                self.key_file.display()
            );
        }
        Ok(Some(file))
    }

    /// Re-reads the key file and replaces the in-memory KEKs.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(file) = self.read_file()? else {
            self.keys.lock().clear();
            return Ok(());
        };
        let cipher = Aes256Gcm::new_from_slice(self.master.as_ref()).expect("32-byte key");
        let mut keys = HashMap::new();
        for (id, entry) in &file.keys {
            let mut versions = Vec::new();
            for v in &entry.versions {
                let raw = B64
                    .decode(&v.wrapped)
                    .with_context(|| format!("key '{id}' v{}: wrapped is not base64", v.version))?;
                if raw.len() != 12 + DEK_LEN + 16 {
                    bail!("key '{id}' v{}: wrapped has wrong length", v.version);
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
                                "key '{id}' v{}: cannot be unwrapped (file edited?)",
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
        *self.keys.lock() = keys;
        Ok(())
    }

    /// Adds a new KEK version to `key_id` (version 1 when `create_only` and the key is new).
    /// Returns the key's latest version after the call.
    fn add_version(&self, key_id: &str, create_only: bool) -> anyhow::Result<(u32, bool)> {
        valid_key_id(key_id).map_err(|e| anyhow::anyhow!(e))?;
        let _guard = self.write_lock.lock();
        let mut file = self.read_file()?.unwrap_or_else(|| KeyFile {
            format: FILE_FORMAT.to_owned(),
            master_key_check: master_check(&self.master),
            keys: Default::default(),
        });
        let entry = file.keys.entry(key_id.to_owned()).or_default();
        let latest = entry.versions.iter().map(|v| v.version).max().unwrap_or(0);
        if create_only && latest > 0 {
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
        self.write_file(&file)?;
        self.reload()?;
        Ok((version, true))
    }

    fn write_file(&self, file: &KeyFile) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(file)?;
        let dir = self
            .key_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            self.key_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.key_file)
            .with_context(|| format!("replacing {}", self.key_file.display()))?;
        Ok(())
    }

    /// Creates KEK `key_id` (version 1) unless it exists. Returns true when it was created.
    pub fn create_key(&self, key_id: &str) -> anyhow::Result<bool> {
        Ok(self.add_version(key_id, true)?.1)
    }

    /// Adds a new version to existing KEK `key_id`; new DEKs use it, old EDEKs stay readable.
    /// Returns the new version.
    pub fn rotate_key(&self, key_id: &str) -> anyhow::Result<u32> {
        self.reload()?;
        if !self.keys.lock().contains_key(key_id) {
            bail!("key '{key_id}' does not exist; create it first");
        }
        Ok(self.add_version(key_id, false)?.0)
    }

    /// Ids of all KEKs with their latest version, sorted.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        let keys = self.keys.lock();
        let mut out: Vec<KeyInfo> = keys
            .iter()
            .map(|(id, v)| KeyInfo {
                key_id: id.clone(),
                latest_version: v.last().map(|(n, _)| *n).unwrap_or(0),
            })
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
        if create && self.auto_create && !exists {
            self.add_version(key_id, true).map_err(other)?;
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
                    "key not found in {} (create it with `kapsule keys create {key_id}` or set \
                     kms.auto_create_keys: true)",
                    self.key_file.display()
                ),
            ),
        })
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
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        rand::rngs::OsRng.fill_bytes(dek.as_mut());
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
        self.with_version(key_id, None, false, |n, _| KeyInfo {
            key_id: key_id.to_owned(),
            latest_version: n,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> SecretKey {
        Zeroizing::new([7u8; 32])
    }

    #[tokio::test]
    async fn round_trip_across_fresh_instances_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
        let err = kms.generate_data_key("orders").await.unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::UnknownKey);
        assert!(kms.create_key("orders").unwrap());
        assert!(!kms.create_key("orders").unwrap());
        let dk1 = kms.generate_data_key("orders").await.unwrap();
        assert_eq!(dk1.kek_version, 1);
        let d1 = kms.derive_key("orders", b"ctx", None).await.unwrap();

        // The file never holds KEK material or DEKs in clear.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&B64.encode(dk1.plaintext.as_ref())));

        assert_eq!(kms.rotate_key("orders").unwrap(), 2);
        let dk2 = kms.generate_data_key("orders").await.unwrap();
        assert_eq!(dk2.kek_version, 2);

        // Fresh instance, empty caches: both EDEKs decrypt, derivation is reproducible.
        let fresh = LocalKms::open_with_master_key(&path, master(), false).unwrap();
        assert_eq!(
            *fresh.decrypt_data_key("orders", &dk1.edek).await.unwrap(),
            *dk1.plaintext
        );
        assert_eq!(
            *fresh.decrypt_data_key("orders", &dk2.edek).await.unwrap(),
            *dk2.plaintext
        );
        let again = fresh.derive_key("orders", b"ctx", Some(1)).await.unwrap();
        assert_eq!(*again.material, *d1.material);
        let latest = fresh.derive_key("orders", b"ctx", None).await.unwrap();
        assert_eq!(latest.kek_version, 2);
        assert_ne!(*latest.material, *d1.material);
        assert_eq!(fresh.key_info("orders").await.unwrap().latest_version, 2);

        // EDEK bound to its key id.
        fresh.create_key("other").unwrap();
        let err = fresh
            .decrypt_data_key("other", &dk1.edek)
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::InvalidCiphertext);
        let err = fresh.decrypt_data_key("nope", &dk1.edek).await.unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::UnknownKey);
    }

    #[tokio::test]
    async fn auto_create_and_pickup_of_keys_created_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/keys.json");
        let a = LocalKms::open_with_master_key(&path, master(), true).unwrap();
        let dk = a.generate_data_key("t1").await.unwrap();
        // Decrypt never auto-creates.
        assert_eq!(
            a.decrypt_data_key("t2", &dk.edek).await.unwrap_err().kind,
            KmsErrorKind::UnknownKey
        );
        // A second instance (e.g. the CLI) creates a key: the first picks it up on a miss.
        let b = LocalKms::open_with_master_key(&path, master(), false).unwrap();
        b.create_key("t3").unwrap();
        let dk3 = a.generate_data_key("t3").await.unwrap();
        assert_eq!(
            *b.decrypt_data_key("t3", &dk3.edek).await.unwrap(),
            *dk3.plaintext
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn wrong_master_key_and_bad_master_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let kms = LocalKms::open_with_master_key(&path, master(), false).unwrap();
        kms.create_key("k").unwrap();
        let err =
            LocalKms::open_with_master_key(&path, Zeroizing::new([8u8; 32]), false).unwrap_err();
        assert!(
            format!("{err:#}").contains("master key does not match"),
            "{err:#}"
        );
        assert!(parse_master_key("c2hvcnQ=").is_err());
        assert!(parse_master_key("not base64!!").is_err());
        assert_eq!(*parse_master_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert_eq!(*parse_master_key(&B64.encode([3u8; 32])).unwrap(), [3; 32]);
    }

    #[test]
    fn config_validation_reports_problems() {
        let c = LocalKmsConfig {
            key_file: PathBuf::new(),
            master_key_env: Some("A=B".into()),
            master_key_file: Some("/x".into()),
            auto_create_keys: false,
        };
        let mut p = Vec::new();
        c.validate("kms", &mut p);
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
