//! `kapsule policy new NAME`: writes a ready-to-build Rust policy crate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Creates `parent/name/` with `Cargo.toml`, `src/lib.rs`, `.cargo/config.toml` (target
/// `wasm32-wasip2`) and `README.md`, and returns the files written. The crate depends on the
/// `kapsule-policy` SDK at `sdk_path`, or at the SDK of the source tree this binary was built
/// from. Refuses an invalid name or an existing directory; writes nothing then.
pub fn new_policy(
    parent: &Path,
    name: &str,
    sdk_path: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || !name.as_bytes()[0].is_ascii_lowercase()
    {
        anyhow::bail!(
            "invalid policy name `{name}`: use 1 to 64 lowercase letters, digits, `-` or `_`, \
             starting with a letter"
        );
    }
    let root = parent.join(name);
    if root.exists() {
        anyhow::bail!(
            "{} already exists; choose another name or --dir",
            root.display()
        );
    }
    let sdk = match sdk_path {
        Some(p) => p.to_path_buf(),
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
            if !built_from.join("Cargo.toml").is_file() {
                anyhow::bail!(
                    "cannot find the kapsule-policy SDK (looked in {}); pass --sdk-path",
                    built_from.display()
                );
            }
            built_from
        }
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("resolving SDK path {}", sdk.display()))?;
    let sdk_str = sdk.display().to_string().replace('\\', "/");
    let files: Vec<(PathBuf, String)> = vec![
        (
            root.join("Cargo.toml"),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
kapsule-policy = {{ path = "{sdk_str}" }}

[profile.release]
opt-level = 3
strip = "debuginfo"
panic = "abort"

# Not part of any enclosing workspace.
[workspace]
"#
            ),
        ),
        (
            root.join(".cargo/config.toml"),
            "[build]\ntarget = \"wasm32-wasip2\"\n".to_string(),
        ),
        (root.join("src/lib.rs"), LIB_RS.replace("{name}", name)),
        (
            root.join("README.md"),
            README
                .replace("{name_underscored}", &name.replace('-', "_"))
                .replace("{name}", name),
        ),
    ];
    std::fs::create_dir_all(root.join("src"))
        .and_then(|_| std::fs::create_dir_all(root.join(".cargo")))
        .with_context(|| format!("creating {}", root.display()))?;
    let mut written = Vec::new();
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

const LIB_RS: &str = r#"//! Kapsule policy `{name}`.
//!
//! Topics planned `PerRecord` are shown to `decide` once per record batch; everything else is
//! decided once per topic in `plan` and cached by Kapsule.

use kapsule_policy::{export_policy, log, Decision, Encrypt, Needs, Policy, RecordView, TopicPlan};

struct MyPolicy {
    /// Key-id prefix, from the binding's `config:` string.
    key_prefix: String,
}

impl Policy for MyPolicy {
    fn init(config: &str) -> Result<Self, String> {
        let key_prefix = if config.is_empty() { "kek-" } else { config };
        log::info("policy {name} initialized");
        Ok(Self { key_prefix: key_prefix.to_string() })
    }

    fn plan(&self, topic: &str) -> TopicPlan {
        if topic.starts_with("public.") {
            TopicPlan::PassAll
        } else if topic.starts_with("mixed.") {
            TopicPlan::PerRecord(Needs::none().with_headers())
        } else {
            TopicPlan::EncryptAll(Encrypt::new(format!("{}{topic}", self.key_prefix)).whole_value())
        }
    }

    fn decide(&self, topic: &str, records: &[RecordView]) -> Vec<Decision> {
        records
            .iter()
            .map(|r| match r.header_str("classification") {
                Some("public") => Decision::Pass,
                _ => Decision::Encrypt(
                    Encrypt::new(format!("{}{topic}", self.key_prefix)).whole_value(),
                ),
            })
            .collect()
    }
}

export_policy!(MyPolicy);
"#;

const README: &str = r#"# {name}

A Kapsule encryption policy.

    cargo build --release            # target wasm32-wasip2 comes from .cargo/config.toml
    kapsule policy check target/wasm32-wasip2/release/{name_underscored}.wasm --topic orders

Bind it in `kapsule.yaml`:

    policy:
      bindings:
        - topics: "*"
          module: path/to/{name_underscored}.wasm
          config: "kek-"
          allowed_key_ids: ["kek-*"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_and_existing_dirs() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1abc", "a b", "../x"] {
            assert!(new_policy(d.path(), bad, None).is_err(), "{bad}");
        }
        std::fs::create_dir(d.path().join("taken")).unwrap();
        assert!(new_policy(d.path(), "taken", None).is_err());
    }

    /// The scaffold builds and passes `check`.
    #[test]
    fn scaffold_builds_and_checks() {
        let d = tempfile::tempdir().unwrap();
        let files = new_policy(d.path(), "my-policy", None).unwrap();
        assert_eq!(files.len(), 4);
        let root = d.path().join("my-policy");
        // Reuse the policies workspace's target dir so dependencies are already built.
        let target = super::super::fixtures::repo_root().join("policies/target");
        let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["build", "--release", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");
        let report = super::super::cli::check_policy(
            wasm,
            "",
            &["orders".into(), "public.x".into(), "mixed.y".into()],
            &[],
        )
        .unwrap();
        assert!(report.contains("key `kek-orders`"), "{report}");
        assert!(report.contains("public.x: pass all"), "{report}");
        assert!(report.contains("mixed.y: decide per record"), "{report}");
    }
}
