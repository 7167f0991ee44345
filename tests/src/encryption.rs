//! Helpers for tests of encrypted topics: KMS sections for the Kapsule config (local KMS with a
//! master key file, or a real OpenBao), raw byte searches, and the admin POST endpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::openbao::{OpenBao, ROOT_TOKEN};
use crate::records::TestRecord;

/// Files of a local KMS (`kms: {type: local}`): a 32-byte master key file and a KEK file, in a
/// temporary directory removed on drop. Several Kapsule instances given the same [`LocalKms`]
/// share their KEKs (stateless scale-out).
#[derive(Debug)]
pub struct LocalKms {
    dir: tempfile::TempDir,
}

impl LocalKms {
    /// Creates a fresh random master key (hex, mode 0600) and an empty key-file location.
    pub fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("kapsule-rig-kms-")
            .tempdir()
            .context("creating the local KMS directory")?;
        let mut key = [0u8; 32];
        getrandom(&mut key)?;
        let path = dir.path().join("master.key");
        std::fs::write(&path, hex::encode(key)).context("writing the master key")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { dir })
    }

    /// Path of the KEK file (created by Kapsule on first use).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    /// The `kms:` section: local KMS, KEKs created on first use.
    pub fn yaml(&self) -> String {
        format!(
            "kms:\n  type: local\n  key_file: \"{}\"\n  master_key_file: \"{}\"\n  auto_create_keys: true\n",
            self.key_file().display(),
            self.dir.path().join("master.key").display()
        )
    }
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// A `kms:` section for a Vault/OpenBao transit KMS, with the root token in a file kept alive by
/// the returned guard. `timeout_ms` and `retries` bound how long one KMS call may take.
pub fn vault_kms_yaml(
    bao: &OpenBao,
    timeout_ms: u64,
    retries: u32,
) -> Result<(String, tempfile::NamedTempFile)> {
    let token = tempfile::Builder::new()
        .prefix("kapsule-rig-token-")
        .tempfile()
        .context("creating the token file")?;
    std::fs::write(token.path(), ROOT_TOKEN)?;
    let yaml = format!(
        "kms:\n  type: vault\n  address: \"{}\"\n  token_file: \"{}\"\n  timeout_ms: {timeout_ms}\n  retries: {retries}\n",
        bao.address(),
        token.path().display()
    );
    Ok((yaml, token))
}

/// True when `needle` (non-empty) occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte slot of a record (key, value, header names and values), for plaintext searches.
pub fn record_bytes(r: &TestRecord) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    out.extend(r.key.as_deref());
    out.extend(r.value.as_deref());
    for (name, value) in &r.headers {
        out.push(name.as_bytes());
        out.extend(value.as_deref());
    }
    out
}

/// Panics naming the record if any `markers` byte sequence occurs in any slot of `stored`.
pub fn assert_no_plaintext(stored: &[TestRecord], markers: &[Vec<u8>]) {
    for (i, r) in stored.iter().enumerate() {
        for slot in record_bytes(r) {
            for m in markers {
                assert!(
                    !contains_bytes(slot, m),
                    "plaintext marker {:?} found in stored record {i} on the broker",
                    String::from_utf8_lossy(m)
                );
            }
        }
    }
}

pub use crate::probe::http_post;

/// Copies `src` over `dst` by writing a temporary sibling and renaming it (what deploy tools do),
/// so a watcher sees one complete new file.
pub fn replace_file(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("wasm.tmp");
    std::fs::copy(src, &tmp).with_context(|| format!("copying {}", src.display()))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("renaming onto {}", dst.display()))?;
    Ok(())
}
