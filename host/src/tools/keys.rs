//! `kapsule keys`: create and rotate KEKs of the local KMS (the cloud KMSs and Vault have their
//! own tools for that), list and describe them in every KMS that allows it (docs/kms.md).
//!
//! | KMS | `list` | `describe` |
//! |---|---|---|
//! | local | every KEK of the key file, latest version | yes |
//! | Vault / OpenBao | every transit key of the mount, latest version, type | yes |
//! | AWS KMS | aliases of `key_template` + `keys`, `KeyState` | yes |
//! | Azure Key Vault | keys of `key_template` + `keys`, enabled, current version | yes |
//! | Google Cloud KMS | CryptoKeys of `key_template` + `keys`, primary version state | yes |

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::Config;
use crate::kms::local::LocalKms;
use crate::kms::KmsConfig;

/// `kapsule keys` subcommands: create/rotate on the local KMS (other KMSs have their own tools),
/// list and describe on every KMS.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a KEK (no-op if it exists).
    Create {
        /// Config file whose `kms:` section is a local KMS.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// KEK id.
        key_id: String,
    },
    /// Add a new version to a KEK: new DEKs use it, old records stay readable.
    Rotate {
        /// Config file whose `kms:` section is a local KMS.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// KEK id.
        key_id: String,
    },
    /// List the KEKs the config reaches, one per line: with a local KMS every KEK and its latest
    /// version (`ID<TAB>vN`); with Vault, AWS, Azure or Google also the KMS's name for the key
    /// and its state (`ID<TAB>vN<TAB>REFERENCE<TAB>STATE`). See docs/kms.md.
    List {
        /// Config file with a `kms:` section.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Look a KEK up in the configured KMS, whatever its type (local, Vault, AWS, Azure, Google):
    /// prints its latest version, or what is wrong (unknown key, no permission, ...).
    Describe {
        /// Config file with a `kms:` section.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// KEK id as rules name it.
        key_id: String,
    },
}

/// Runs one `kapsule keys` subcommand, printing its result on stdout.
pub fn run_keys_command(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { config, key_id } => {
            let created = local_kms(&kms_config(&config)?)?.create_key(&key_id)?;
            println!(
                "{key_id}: {}",
                if created { "created" } else { "already exists" }
            );
        }
        KeysCommand::Rotate { config, key_id } => {
            let version = local_kms(&kms_config(&config)?)?.rotate_key(&key_id)?;
            println!("{key_id}: now at version {version}");
        }
        KeysCommand::Describe { config, key_id } => {
            crate::crypto::wire::validate_key_id(&key_id)
                .map_err(|e| anyhow::anyhow!("key id {key_id:?}: {e}"))?;
            let kms = kms_config(&config)?.build()?;
            let info = super::runtime()?
                .block_on(kms.key_info(&key_id))
                .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
            println!("{key_id}\t{}\tv{}", kms.backend(), info.latest_version);
        }
        KeysCommand::List { config } => {
            let kms = kms_config(&config)?;
            for line in super::runtime()?.block_on(list_lines(&kms))? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// The lines `kapsule keys list` prints for the KMS of `config`, sorted by key id.
pub async fn list_lines(config: &KmsConfig) -> anyhow::Result<Vec<String>> {
    let listed = match config {
        KmsConfig::Local(c) => {
            let keys = LocalKms::open(c)?.list_keys();
            return Ok(keys
                .iter()
                .map(|k| format!("{}\tv{}", k.key_id, k.latest_version))
                .collect());
        }
        KmsConfig::Vault(c) => crate::kms::vault::VaultKms::new(c)?.list_keys().await,
        KmsConfig::Aws(c) => crate::kms::aws::AwsKms::new(c)?.list_keys().await,
        KmsConfig::Azure(c) => crate::kms::azure::AzureKms::new(c)?.list_keys().await,
        KmsConfig::Gcp(c) => crate::kms::gcp::GcpKms::new(c)?.list_keys().await,
    };
    let listed = listed.map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    Ok(listed.iter().map(|k| k.line()).collect())
}

/// The `kms:` section of the config file at `path`.
fn kms_config(path: &Path) -> anyhow::Result<KmsConfig> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    config
        .kms
        .ok_or_else(|| anyhow::anyhow!("the config has no `kms:` section"))
}

/// The local KMS of `config`, or what manages the keys of another KMS.
fn local_kms(config: &KmsConfig) -> anyhow::Result<LocalKms> {
    match config {
        KmsConfig::Local(local) => LocalKms::open(local),
        KmsConfig::Vault(_) => anyhow::bail!(
            "the config's KMS is Vault: manage its keys with `bao`/`vault write -f transit/keys/NAME`"
        ),
        KmsConfig::Azure(_) => anyhow::bail!(
            "the config's KMS is Azure Key Vault: manage its keys with `az keyvault key create/rotate` (see docs/kms.md)"
        ),
        KmsConfig::Gcp(_) => anyhow::bail!(
            "the config's KMS is Google Cloud KMS: manage its keys with `gcloud kms keys create/versions create` (see docs/kms.md)"
        ),
        KmsConfig::Aws(_) => anyhow::bail!(
            "the config's KMS is AWS KMS: manage its keys with `aws kms create-key` / `aws kms create-alias` (see docs/kms.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local KMS config over a fresh key file in `dir`, its master key in a file.
    fn local_config(dir: &Path) -> KmsConfig {
        let master = dir.join("master.key");
        std::fs::write(&master, "11".repeat(32)).unwrap();
        serde_norway::from_str(&format!(
            "type: local\nkey_file: \"{}\"\nmaster_key_file: \"{}\"\n",
            dir.join("keys.json").display(),
            master.display()
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn list_of_a_local_kms_shows_every_kek_with_its_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let config = local_config(dir.path());
        assert!(list_lines(&config).await.unwrap().is_empty());
        let kms = local_kms(&config).unwrap();
        kms.create_key("payments").unwrap();
        kms.create_key("orders").unwrap();
        kms.rotate_key("orders").unwrap();
        assert_eq!(
            list_lines(&config).await.unwrap(),
            ["orders\tv2", "payments\tv1"]
        );
    }

    #[test]
    fn create_and_rotate_name_the_tool_of_every_other_kms() {
        for (yaml, tool) in [
            ("type: vault\naddress: https://v:8200\n", "transit/keys/NAME"),
            ("type: aws\nregion: eu-west-1\n", "aws kms create-key"),
            (
                "type: gcp\nkey_template: projects/p/locations/l/keyRings/r/cryptoKeys/{key_id}\ncredential: { type: metadata_server }\n",
                "gcloud kms keys create",
            ),
        ] {
            let config: KmsConfig = serde_norway::from_str(yaml).unwrap();
            let err = local_kms(&config).unwrap_err().to_string();
            assert!(err.contains(tool), "{err}");
        }
    }
}
