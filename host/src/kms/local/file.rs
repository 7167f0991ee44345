//! The key file on disk (format `kapsule-local-kms/v2`, see the parent module's docs): its
//! serde layout, the master-key check and integrity MAC, and how [`LocalKms`] reads, reloads,
//! extends and writes it. Every write holds the in-process write lock and the cross-process
//! file lock; every read authenticates the whole file before a key is used.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{hkdf32, now_secs, valid_key_id, KekVersion, LocalKms};
use crate::kms::keyfile::{read_no_follow, write_atomic, FileLock};
use crate::kms::{SecretKey, DEK_LEN};

/// The current format: a generation counter and an integrity MAC over the whole file.
pub(super) const FILE_FORMAT: &str = "kapsule-local-kms/v2";
/// The pre-MAC format: still read, upgraded to [`FILE_FORMAT`] on open.
pub(super) const LEGACY_FORMAT: &str = "kapsule-local-kms/v1";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyFile {
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

pub(super) fn master_check(master: &SecretKey) -> String {
    let k = hkdf32(
        master.as_ref(),
        b"kapsule local kms",
        &[b"master key check v1"],
    );
    B64.encode(&k[..16])
}

pub(super) fn file_mac(master: &SecretKey, file: &KeyFile) -> anyhow::Result<ring::hmac::Tag> {
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

impl LocalKms {
    /// Loads the file, upgrading a v1 file (no MAC) to v2 in place.
    pub(super) fn loaded(self) -> anyhow::Result<Self> {
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

    /// Reads, parses and authenticates the key file. `Ok(None)` when it does not exist yet.
    pub(super) fn read_file(&self) -> anyhow::Result<Option<KeyFile>> {
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
    pub(super) fn add_version(
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
}
