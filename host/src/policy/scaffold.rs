//! `kapsule policy new NAME --lang rust|python|js|c`: writes a ready-to-build policy.
//!
//! Every template implements the same policy, so the languages can be compared line by line:
//! `public.*` topics pass, `mixed.*` topics are decided per record from the `classification`
//! header (`public` passes, anything else is encrypted), every other topic is encrypted whole
//! under `<config or "kek-"><topic>`. Each builds with one command (`cargo build --release` or
//! `./build.sh`) and passes `kapsule policy check` as generated.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Language of a policy template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust crate on the `kapsule-policy` crate (cargo, target wasm32-wasip2).
    Rust,
    /// Python on `guest-sdk/python` (componentize-py).
    Python,
    /// JavaScript on `guest-sdk/js` (componentize-js).
    Js,
    /// C on `guest-sdk/c` (wit-bindgen c + clang).
    C,
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        })
    }
}

impl Lang {
    /// The one command that builds a generated policy, run in its directory.
    pub fn build_command(self) -> &'static str {
        match self {
            Lang::Rust => "cargo build --release",
            _ => "./build.sh",
        }
    }

    /// The built component of policy `name`, relative to its directory.
    pub fn artifact(self, name: &str) -> PathBuf {
        match self {
            Lang::Rust => PathBuf::from(format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            )),
            _ => PathBuf::from(format!("{name}.wasm")),
        }
    }
}

/// The `kapsule policy check` arguments a template's README shows and its tests run.
pub const TEMPLATE_CHECK_TOPICS: [&str; 3] = ["orders", "public.news", "mixed.events"];

/// Creates `parent/name/` with a policy in `lang` and returns the files written. The policy
/// builds against the SDKs in `sdk_path` (the repository's `guest-sdk` directory), or those of
/// the source tree this binary was built from. Refuses an invalid name or an existing
/// directory; writes nothing then.
pub fn new_policy(
    parent: &Path,
    name: &str,
    lang: Lang,
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
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"),
    };
    let marker = match lang {
        Lang::Rust => "Cargo.toml",
        Lang::Python => "python/build.sh",
        Lang::Js => "js/build.mjs",
        Lang::C => "c/build.sh",
    };
    if !sdk.join(marker).is_file() {
        anyhow::bail!(
            "cannot find the {lang} policy SDK ({} is missing); pass --sdk-path <repo>/guest-sdk",
            sdk.join(marker).display()
        );
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("resolving SDK path {}", sdk.display()))?;
    let sdk_str = sdk.display().to_string().replace('\\', "/");
    let fill = |t: &str| {
        t.replace("{name_underscored}", &name.replace('-', "_"))
            .replace("{name}", name)
            .replace("{sdk}", &sdk_str)
            .replace("{check_topics}", &check_args())
    };
    let files: Vec<(PathBuf, String, bool)> = match lang {
        Lang::Rust => vec![
            (root.join("Cargo.toml"), fill(RUST_CARGO), false),
            (
                root.join(".cargo/config.toml"),
                "[build]\ntarget = \"wasm32-wasip2\"\n".to_string(),
                false,
            ),
            (root.join("src/lib.rs"), fill(RUST_LIB), false),
        ],
        Lang::Python => vec![
            (root.join("app.py"), fill(PY_APP), false),
            (root.join("build.sh"), fill(PY_BUILD), true),
        ],
        Lang::Js => vec![
            (root.join("policy.js"), fill(JS_POLICY), false),
            (root.join("build.sh"), fill(JS_BUILD), true),
        ],
        Lang::C => vec![
            (root.join("policy.c"), fill(C_POLICY), false),
            (root.join("build.sh"), fill(C_BUILD), true),
        ],
    };
    let readme = fill(README)
        .replace("{lang}", &lang.to_string())
        .replace("{build}", lang.build_command())
        .replace("{artifact}", &lang.artifact(name).display().to_string());
    let mut written = Vec::new();
    for (path, text, executable) in
        files
            .into_iter()
            .chain([(root.join("README.md"), readme, false)])
    {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        written.push(path);
    }
    Ok(written)
}

fn check_args() -> String {
    TEMPLATE_CHECK_TOPICS
        .iter()
        .map(|t| format!("--topic {t}"))
        .collect::<Vec<_>>()
        .join(" ")
}

const README: &str = r#"# {name}

A Kapsule encryption policy in {lang}. `public.*` topics pass in clear, `mixed.*` topics are
decided per record from the `classification` header (`public` passes, anything else is
encrypted), every other topic is encrypted whole under key `<config or "kek-"><topic>`.

    {build}
    kapsule policy check {artifact} {check_topics}

`policy check` runs the module as Kapsule does: plans, decisions on sample records (or
`--records file.jsonl`), cost per record, and whether a full 1 MiB batch fits the call deadline.

Bind it in `kapsule.yaml` (Kapsule reloads it when the file changes):

    policy:
      watch: true
      bindings:
        - topics: "*"
          module: /path/to/{name}/{artifact}
          config: "kek-"
          allowed_key_ids: ["kek-*"]

`plan` and `reveal` see the client's authenticated principal (`client.name`); a `memo` in a
per-record plan lets Kapsule decide once per distinct value. The sandbox has no clocks, files,
network or environment; printed output goes to Kapsule's rate-limited policy log, like the SDK's
log functions. Never log record contents.
"#;

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
kapsule-policy = { path = "{sdk}" }

[profile.release]
opt-level = 3
strip = "debuginfo"
panic = "abort"

# Not part of any enclosing workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! Kapsule policy `{name}` (contract `kapsule:policy@0.2.0`).
//!
//! `plan` runs once per (topic, client principal) and is cached by Kapsule. Topics planned
//! per-record are shown to `decide`; this one declares that its decision depends only on the
//! `classification` header, so Kapsule asks once per distinct value and reuses the answer.
//! `reveal` says what each principal may read in clear on Fetch.

use kapsule_policy::{
    export_policy, Client, Decision, Encrypt, MemoKey, Needs, Policy, RecordView, Reveal, TopicPlan,
};

struct MyPolicy {
    /// Key-id prefix, from the binding's `config:` string.
    key_prefix: String,
}

impl Policy for MyPolicy {
    fn init(config: &str) -> Result<Self, String> {
        let key_prefix = if config.is_empty() { "kek-" } else { config };
        Ok(Self { key_prefix: key_prefix.to_string() })
    }

    fn plan(&self, topic: &str, _client: &Client) -> TopicPlan {
        if topic.starts_with("public.") {
            TopicPlan::PassAll
        } else if topic.starts_with("mixed.") {
            TopicPlan::per_record(Needs::none().with_headers())
                .memo(MemoKey::header("classification"))
        } else {
            TopicPlan::EncryptAll(Encrypt::new(format!("{}{topic}", self.key_prefix)).whole_value())
        }
    }

    fn decide(&self, topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
        let encrypt = Decision::Encrypt(Encrypt::new(format!("{}{topic}", self.key_prefix)).whole_value());
        records
            .iter()
            .map(|r| match r.header_str("classification") {
                Some("public") => Decision::Pass,
                _ => encrypt.clone(),
            })
            .collect()
    }

    fn reveal(&self, _topic: &str, client: &Client) -> Reveal {
        match client.principal_name() {
            // An unauthenticated client reads ciphertext only.
            None => Reveal::Ciphertext,
            Some(_) => Reveal::All,
        }
    }
}

export_policy!(MyPolicy);
"#;

const PY_APP: &str = r#""""Kapsule policy `{name}` (kapsule:policy@0.2.0).

``plan`` is called once per (topic, client principal) and cached by Kapsule; topics planned
``per_record`` are shown to ``decide`` per record batch, and with a ``memo`` only once per
distinct value of what the decision depends on. ``reveal`` says what a client may read in clear
on Fetch. No clocks, files or network; ``print`` goes to Kapsule's rate-limited policy log (as
``kapsule_policy.log`` does): never print record contents.
"""

from kapsule_policy import Client, Decision, Encrypt, Memo, Needs, Policy, Reveal, TopicPlan, export


class MyPolicy(Policy):
    def __init__(self, config: str):
        # Key-id prefix, from the binding's `config:` string. Raising here refuses the module.
        self.key_prefix = config or "kek-"

    def plan(self, topic: str, client: Client) -> TopicPlan:
        # client.name is the authenticated principal (SASL user, certificate subject) or None.
        if topic.startswith("public."):
            return TopicPlan.PASS_ALL
        if topic.startswith("mixed."):
            # The decision depends only on the `classification` header: Kapsule asks once per value.
            return TopicPlan.per_record(Needs(headers=True), memo=Memo.header("classification"))
        return TopicPlan.encrypt_all(Encrypt(self.key_prefix + topic).whole_value())

    def decide(self, topic, client, records):
        encrypt = Decision.encrypt(Encrypt(self.key_prefix + topic).whole_value())
        return [Decision.PASS if r.header("classification") == b"public" else encrypt
                for r in records]

    def reveal(self, topic: str, client: Client) -> Reveal:
        # Everyone reads everything. To restrict, e.g.:
        #   return Reveal.CIPHERTEXT if client.name == "backup" else Reveal.ALL
        return Reveal.ALL


WitWorld = export(MyPolicy)
"#;

const PY_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm with componentize-py (scripts/install-policy-toolchains.sh installs it).
set -euo pipefail
cd "$(dirname "$0")"
sdk="${KAPSULE_SDK:-{sdk}}"
exec "$sdk/python/build.sh" app.py {name}.wasm
"#;

const JS_POLICY: &str = r#"// Kapsule policy `{name}` (kapsule:policy@0.2.0).
//
// `plan` is called once per (topic, client principal) and cached by Kapsule; topics planned per
// record are shown to `decide` per record batch, and with a memo only once per distinct value of
// what the decision depends on. `reveal` says what a client may read in clear on Fetch. No clocks,
// files or network; console.log goes to Kapsule's rate-limited policy log (as `log` from the SDK
// does): never log record contents. Types: kapsule-policy.d.ts.
import { Decision, Encrypt, Memo, Needs, Reveal, TopicPlan, exportPolicy } from 'kapsule-policy';

class MyPolicy {
  constructor(config) {
    // Key-id prefix, from the binding's `config:` string. Throwing here refuses the module.
    this.keyPrefix = config || 'kek-';
  }

  plan(topic, client) {
    // client.name is the authenticated principal (SASL user, certificate subject) or null.
    if (topic.startsWith('public.')) return TopicPlan.PASS_ALL;
    if (topic.startsWith('mixed.')) {
      // The decision depends only on the `classification` header: Kapsule asks once per value.
      return TopicPlan.perRecord(new Needs({ headers: true }), Memo.header('classification'));
    }
    return TopicPlan.encryptAll(new Encrypt(this.keyPrefix + topic).wholeValue());
  }

  decide(topic, client, records) {
    const encrypt = Decision.encrypt(new Encrypt(this.keyPrefix + topic).wholeValue());
    return records.map((r) => (r.headerStr('classification') === 'public' ? Decision.PASS : encrypt));
  }

  reveal(topic, client) {
    // Everyone reads everything. To restrict, e.g.:
    //   return client.name === 'backup' ? Reveal.CIPHERTEXT : Reveal.ALL;
    return Reveal.ALL;
  }
}

export const { init, plan, decide, reveal } = exportPolicy(MyPolicy);
"#;

const JS_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm with componentize-js (scripts/install-policy-toolchains.sh installs it).
set -euo pipefail
cd "$(dirname "$0")"
sdk="${KAPSULE_SDK:-{sdk}}"
exec node "$sdk/js/build.mjs" policy.js -o {name}.wasm
"#;

const C_POLICY: &str = r#"// Kapsule policy `{name}` (C SDK: kapsule_policy.h, kapsule:policy@0.2.0).
//
// kp_policy_plan is called once per (topic, client principal) and cached by Kapsule; topics planned
// per record are shown to kp_policy_decide per record batch, and with a memo only once per distinct
// value of what the decision depends on. kp_policy_reveal says what a client may read in clear on
// Fetch. No clocks, files or network; printf goes to Kapsule's rate-limited policy log (as kp_log
// does): never print record contents.
#include <stdlib.h>
#include <string.h>

#include "kapsule_policy.h"

static char g_prefix[64] = "kek-";
static char g_key[320];

const char *kp_policy_init(const char *config, size_t len) {
  if (len == 0) return NULL;
  if (len >= sizeof g_prefix) return "{name}: key prefix longer than 63 bytes";
  memcpy(g_prefix, config, len + 1);
  return NULL;
}

// g_key = prefix + topic (topics are at most 249 bytes).
static const char *key_for(kp_str topic) {
  size_t p = strlen(g_prefix);
  size_t n = topic.len < sizeof g_key - p - 1 ? topic.len : sizeof g_key - p - 1;
  memcpy(g_key, g_prefix, p);
  memcpy(g_key + p, topic.ptr, n);
  g_key[p + n] = 0;
  return g_key;
}

static int starts_with(kp_str s, const char *prefix) {
  size_t n = strlen(prefix);
  return s.len >= n && memcmp(s.ptr, prefix, n) == 0;
}

// client->authenticated and client->name tell who produces (kp_client_is compares the name).
kp_plan kp_policy_plan(kp_str topic, const kp_client *client) {
  kp_plan p = {.kind = KP_PLAN_ENCRYPT_ALL};
  if (starts_with(topic, "public.")) {
    p.kind = KP_PLAN_PASS_ALL;
  } else if (starts_with(topic, "mixed.")) {
    // The decision depends only on the `classification` header: Kapsule asks once per value.
    p.kind = KP_PLAN_PER_RECORD;
    p.needs = KP_NEEDS_HEADERS;
    p.memo = kp_memo_header("classification");
  } else {
    p.encrypt = kp_encrypt_whole(key_for(topic));
  }
  return p;
}

void kp_policy_decide(kp_str topic, const kp_client *client, const kp_record *records, size_t n,
                      kp_decision *out) {
  kp_decision encrypt = kp_decide_encrypt(kp_encrypt_whole(key_for(topic)));
  for (size_t i = 0; i < n; i++) {
    // A zeroed decision passes.
    if (!kp_header_is(&records[i], "classification", "public")) out[i] = encrypt;
  }
}

// Everyone reads everything (the SDK's default would do the same). To restrict, e.g.:
//   if (kp_client_is(client, "backup")) r.kind = KP_REVEAL_CIPHERTEXT;
kp_reveal kp_policy_reveal(kp_str topic, const kp_client *client) {
  kp_reveal r = {.kind = KP_REVEAL_ALL};
  return r;
}
"#;

const C_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm with wit-bindgen c + clang (scripts/install-policy-toolchains.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
sdk="${KAPSULE_SDK:-{sdk}}"
exec "$sdk/c/build.sh" policy.c {name}.wasm
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_and_existing_dirs() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1abc", "a b", "../x"] {
            assert!(
                new_policy(d.path(), bad, Lang::Rust, None).is_err(),
                "{bad}"
            );
        }
        std::fs::create_dir(d.path().join("taken")).unwrap();
        assert!(new_policy(d.path(), "taken", Lang::Python, None).is_err());
        let e = new_policy(d.path(), "x", Lang::Js, Some(d.path())).unwrap_err();
        assert!(format!("{e}").contains("js/build.mjs is missing"), "{e}");
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn every_language_writes_an_executable_build_command_and_readme() {
        let d = tempfile::tempdir().unwrap();
        for (lang, name) in [
            (Lang::Python, "py-pol"),
            (Lang::Js, "js-pol"),
            (Lang::C, "c-pol"),
        ] {
            let files = new_policy(d.path(), name, lang, None).unwrap();
            assert_eq!(files.len(), 3, "{files:?}");
            let build = std::fs::read_to_string(d.path().join(name).join("build.sh")).unwrap();
            assert!(build.contains(&format!("{name}.wasm")), "{build}");
            let readme = std::fs::read_to_string(d.path().join(name).join("README.md")).unwrap();
            assert!(
                readme.contains("--topic mixed.events") && readme.contains(&format!("{name}.wasm")),
                "{readme}"
            );
        }
    }

    /// The Rust scaffold builds and passes `check`.
    #[test]
    fn scaffold_builds_and_checks() {
        let d = tempfile::tempdir().unwrap();
        let files = new_policy(d.path(), "my-policy", Lang::Rust, None).unwrap();
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
        let opts = super::super::cli::CheckOptions {
            topics: TEMPLATE_CHECK_TOPICS.map(String::from).to_vec(),
            ..Default::default()
        };
        let report = super::super::cli::check_policy(&wasm, &opts).unwrap();
        assert!(report.passed(), "{}\n{:?}", report.text, report.failures);
        let text = &report.text;
        assert!(text.contains("key `kek-orders`"), "{text}");
        assert!(text.contains("public.news: pass all"), "{text}");
        assert!(text.contains("mixed.events: decide per record"), "{text}");
    }
}
