//! `kapsule policy new NAME --lang rust|python|js|c`: writes a ready-to-build policy with the SDK
//! of its language beside it, as a package.
//!
//! Every template implements the same policy, so the languages can be compared line by line:
//! `public.*` topics pass, `mixed.*` topics are decided per record from the `classification`
//! header (`public` passes, anything else is encrypted), every other topic is encrypted whole
//! under `<config or "kek-"><topic>`. Each builds with its ecosystem's commands and passes
//! `kapsule policy check` as generated.
//!
//! The SDKs (`guest-sdk/<lang>` of the source tree) are compiled into this binary and written to
//! `NAME/vendor/kapsule-policy/`; the template depends on that copy the way its ecosystem
//! expects: a cargo path dependency, `pip install ./vendor/kapsule-policy`, an npm `file:`
//! dependency, the C header, source and build script. So a release binary copied anywhere
//! scaffolds policies that build without a checkout: nothing is read from a path compiled into it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Language of a policy template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust crate on the `kapsule-policy` crate (cargo, target wasm32-wasip2).
    Rust,
    /// Python on the `kapsule-policy` pip package (componentize-py).
    Python,
    /// JavaScript on the `kapsule-policy` npm package (componentize-js).
    Js,
    /// C on `kapsule_policy.h` (wit-bindgen c + clang for wasm32-wasi).
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
    /// The command that installs the generated policy's SDK package, run once in its directory
    /// (none for Rust and C: cargo and the build script use the vendored copy directly).
    pub fn setup_command(self) -> Option<&'static str> {
        match self {
            Lang::Rust | Lang::C => None,
            Lang::Python => Some("python3 -m pip install ./vendor/kapsule-policy"),
            Lang::Js => Some("npm install"),
        }
    }

    /// The one command that builds generated policy `name`, run in its directory after
    /// [`Lang::setup_command`].
    pub fn build_command(self, name: &str) -> String {
        match self {
            Lang::Rust => "cargo build --release".to_string(),
            Lang::Python => format!("kapsule-policy-build src/app.py {name}.wasm"),
            Lang::Js => "npm run build".to_string(),
            Lang::C => "./build.sh".to_string(),
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

    /// Path of the contract inside this language's SDK package.
    #[cfg(test)]
    fn sdk_wit(self) -> &'static str {
        match self {
            Lang::Python => "kapsule_policy/wit/policy.wit",
            _ => "wit/policy.wit",
        }
    }

    /// The SDK package of this language, as compiled into the binary.
    fn sdk(self) -> &'static [SdkFile] {
        match self {
            Lang::Rust => RUST_SDK,
            Lang::Python => PYTHON_SDK,
            Lang::Js => JS_SDK,
            Lang::C => C_SDK,
        }
    }
}

/// One file of an SDK package: its path inside `guest-sdk/<lang>` and its text.
type SdkFile = (&'static str, &'static str);

/// `(path, text)` of each listed file of `guest-sdk/<lang>`, compiled into the binary.
macro_rules! sdk_files {
    ($lang:literal: $($path:literal),+ $(,)?) => {
        &[$(($path, include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/", $lang, "/", $path
        )))),+]
    };
}

// The files of each SDK package (what `cargo package`, the wheel and `npm pack` hold). The unit
// test `embedded_sdks_are_the_packages_of_the_tree` fails when a package file is missing here.
const RUST_SDK: &[SdkFile] = sdk_files!("rust":
    "Cargo.toml", "src/lib.rs", "src/types.rs", "src/log.rs", "src/json_pointer.rs", "src/schema.rs",
    "wit/policy.wit");
const PYTHON_SDK: &[SdkFile] = sdk_files!("python":
    "pyproject.toml", "README.md", "kapsule_policy/__init__.py", "kapsule_policy/_types.py",
    "kapsule_policy/_bindings.py", "kapsule_policy/_build.py", "kapsule_policy/log.py",
    "kapsule_policy/schema.py",
    "kapsule_policy/componentize-py.toml", "kapsule_policy/wit/policy.wit");
const JS_SDK: &[SdkFile] = sdk_files!("js":
    "package.json", "README.md", "kapsule-policy.js", "kapsule-policy.d.ts", "build.mjs",
    "types/kapsule-policy.d.ts", "types/interfaces/kapsule-policy-types.d.ts", "wit/policy.wit");
const C_SDK: &[SdkFile] = sdk_files!("c":
    "kapsule_policy.h", "kapsule_policy.c", "build.sh", "wit/policy.wit");

/// Where a template's SDK copy goes, relative to the policy's directory.
pub const VENDORED_SDK: &str = "vendor/kapsule-policy";

/// The `kapsule policy check` arguments a template's README shows and its tests run.
pub const TEMPLATE_CHECK_TOPICS: [&str; 3] = ["orders", "public.news", "mixed.events"];

/// Creates `parent/name/` with a policy in `lang` and its SDK package in
/// `name/vendor/kapsule-policy/`; returns the template's files (the SDK copy last, as one
/// directory). Refuses an invalid name or an existing directory; writes nothing then.
pub fn new_policy(parent: &Path, name: &str, lang: Lang) -> anyhow::Result<Vec<PathBuf>> {
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
    let fill = |t: &str| {
        t.replace("{name_underscored}", &name.replace('-', "_"))
            .replace("{name}", name)
            .replace("{check_topics}", &check_args())
    };
    let files: Vec<(PathBuf, String)> = match lang {
        Lang::Rust => vec![
            (root.join("Cargo.toml"), fill(RUST_CARGO)),
            (
                root.join(".cargo/config.toml"),
                "[build]\ntarget = \"wasm32-wasip2\"\n".to_string(),
            ),
            (root.join("src/lib.rs"), fill(RUST_LIB)),
        ],
        // The policy's sources sit in src/, apart from the SDK copy and any virtualenv:
        // componentize-py reads every componentize-py.toml under the module's directory.
        Lang::Python => vec![(root.join("src/app.py"), fill(PY_APP))],
        Lang::Js => vec![
            (root.join("policy.js"), fill(JS_POLICY)),
            (root.join("package.json"), fill(JS_PACKAGE)),
        ],
        Lang::C => vec![
            (root.join("policy.c"), fill(C_POLICY)),
            (root.join("build.sh"), fill(C_BUILD)),
        ],
    };
    let setup = match lang.setup_command() {
        Some(c) => format!("    {c}    # once: installs the SDK package\n"),
        None => String::new(),
    };
    let readme = fill(README)
        .replace("{lang}", &lang.to_string())
        .replace("{setup}", &setup)
        .replace("{build}", &lang.build_command(name))
        .replace("{artifact}", &lang.artifact(name).display().to_string());
    let vendored = root.join(VENDORED_SDK);
    let sdk = lang
        .sdk()
        .iter()
        .map(|(path, text)| (vendored.join(path), text.to_string()));
    let mut written = Vec::new();
    for (path, text) in files
        .into_iter()
        .chain([(root.join("README.md"), readme)])
        .chain(sdk)
    {
        write_file(&path, &text)?;
        if !path.starts_with(&vendored) {
            written.push(path);
        }
    }
    written.push(vendored);
    Ok(written)
}

/// Writes `text` to `path`, creating its directory; shell scripts and Node programs (the C
/// template's `build.sh`, the SDKs' build scripts) are made executable.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if path.extension().is_some_and(|e| e == "sh" || e == "mjs") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
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

{setup}    {build}
    kapsule policy check {artifact} {check_topics}

The SDK package is in `vendor/kapsule-policy/`, written by `kapsule policy new`; the same package
is published as `kapsule-policy` (crates.io, PyPI, npm) if you prefer to depend on a release.

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
kapsule-policy = { path = "vendor/kapsule-policy" }

[profile.release]
opt-level = 3
strip = "debuginfo"
panic = "abort"

# Not part of any enclosing workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! Kapsule policy `{name}` (contract `kapsule:policy@0.3.0`).
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

const PY_APP: &str = r#""""Kapsule policy `{name}` (kapsule:policy@0.3.0).

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

const JS_POLICY: &str = r#"// Kapsule policy `{name}` (kapsule:policy@0.3.0).
//
// `plan` is called once per (topic, client principal) and cached by Kapsule; topics planned per
// record are shown to `decide` per record batch, and with a memo only once per distinct value of
// what the decision depends on. `reveal` says what a client may read in clear on Fetch. No clocks,
// files or network; console.log goes to Kapsule's rate-limited policy log (as `log` from the SDK
// does): never log record contents. Types: kapsule-policy.d.ts of the kapsule-policy package.
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

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "kapsule-policy-build policy.js -o {name}.wasm"
  },
  "dependencies": {
    "kapsule-policy": "file:vendor/kapsule-policy"
  }
}
"#;

const C_POLICY: &str = r#"// Kapsule policy `{name}` (C SDK: kapsule_policy.h, kapsule:policy@0.3.0).
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
# Builds {name}.wasm with the C SDK in vendor/kapsule-policy: wit-bindgen c + clang for wasm32-wasi,
# from wasi-sdk (WASI_SDK_PATH) or a system clang with wasi-libc (--sysroot DIR or WASI_SYSROOT);
# see vendor/kapsule-policy/build.sh.
set -euo pipefail
cd "$(dirname "$0")"
exec ./vendor/kapsule-policy/build.sh "$@" policy.c {name}.wasm
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use kapsule_test_fixtures::repo_root;

    #[test]
    fn refuses_bad_names_and_existing_dirs() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1abc", "a b", "../x"] {
            assert!(new_policy(d.path(), bad, Lang::Rust).is_err(), "{bad}");
        }
        std::fs::create_dir(d.path().join("taken")).unwrap();
        assert!(new_policy(d.path(), "taken", Lang::Python).is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    /// Each template writes its README, its own files and a copy of its SDK package, from the
    /// binary alone (the test runs in a directory far from the checkout).
    #[test]
    fn every_language_writes_its_sdk_package_and_readme() {
        let d = tempfile::tempdir().unwrap();
        for (lang, name, manifest) in [
            (Lang::Rust, "rs-pol", "Cargo.toml"),
            (Lang::Python, "py-pol", "pyproject.toml"),
            (Lang::Js, "js-pol", "package.json"),
            (Lang::C, "c-pol", "kapsule_policy.h"),
        ] {
            let files = new_policy(d.path(), name, lang).unwrap();
            let root = d.path().join(name);
            assert_eq!(files.last(), Some(&root.join(VENDORED_SDK)), "{files:?}");
            assert!(root.join(VENDORED_SDK).join(manifest).is_file(), "{lang}");
            assert!(
                root.join(VENDORED_SDK).join(lang.sdk_wit()).is_file(),
                "{lang}"
            );
            let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
            assert!(
                readme.contains("--topic mixed.events")
                    && readme.contains(&lang.build_command(name))
                    && readme.contains(&lang.artifact(name).display().to_string()),
                "{readme}"
            );
        }
        let cargo = std::fs::read_to_string(d.path().join("rs-pol/Cargo.toml")).unwrap();
        assert!(
            cargo.contains(r#"path = "vendor/kapsule-policy""#),
            "{cargo}"
        );
        let npm = std::fs::read_to_string(d.path().join("js-pol/package.json")).unwrap();
        assert!(
            npm.contains(r#""kapsule-policy": "file:vendor/kapsule-policy""#),
            "{npm}"
        );
        assert!(d.path().join("py-pol/src/app.py").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for script in ["c-pol/build.sh", "c-pol/vendor/kapsule-policy/build.sh"] {
                let mode = std::fs::metadata(d.path().join(script))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o111, 0o111, "{script}");
            }
        }
    }

    /// The SDKs compiled into the binary are the packages of `guest-sdk/<lang>`: every file a
    /// package ships (not its tests, lock file or dev tools) is embedded, so a new SDK file
    /// cannot be forgotten by `policy new`.
    #[test]
    fn embedded_sdks_are_the_packages_of_the_tree() {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    if !["node_modules", "tests", "test", "target", "__pycache__"]
                        .contains(&name.as_str())
                        && !name.ends_with(".egg-info")
                    {
                        walk(&path, base, out);
                    }
                } else if ![
                    "package-lock.json",
                    "gen-types.mjs",
                    "Cargo.lock",
                    ".gitignore",
                ]
                .contains(&name.as_str())
                {
                    let rel = path.strip_prefix(base).unwrap();
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        for (lang, dir) in [
            (Lang::Rust, "rust"),
            (Lang::Python, "python"),
            (Lang::Js, "js"),
            (Lang::C, "c"),
        ] {
            let base = repo_root().join("guest-sdk").join(dir);
            let mut on_disk = Vec::new();
            walk(&base, &base, &mut on_disk);
            on_disk.sort();
            let mut embedded: Vec<String> = lang.sdk().iter().map(|(p, _)| p.to_string()).collect();
            embedded.sort();
            assert_eq!(embedded, on_disk, "guest-sdk/{dir}");
        }
    }

    /// Each SDK ships the contract itself, identical to `wit/policy.wit` (scripts/sync-sdk-wit.sh
    /// copies it after a change).
    #[test]
    fn every_sdk_ships_the_current_contract() {
        let contract = include_str!("../../../wit/policy.wit");
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::C] {
            let (_, wit) = lang
                .sdk()
                .iter()
                .find(|(p, _)| *p == lang.sdk_wit())
                .unwrap();
            assert!(
                *wit == contract,
                "the {lang} SDK's {} differs from wit/policy.wit: run scripts/sync-sdk-wit.sh",
                lang.sdk_wit()
            );
        }
    }

    /// The Rust template builds against its vendored SDK and passes `check`.
    #[test]
    fn rust_template_builds_and_checks() {
        let d = tempfile::tempdir().unwrap();
        new_policy(d.path(), "my-policy", Lang::Rust).unwrap();
        let root = d.path().join("my-policy");
        // Reuse the policies workspace's target dir so dependencies are already built.
        let target = repo_root().join("policies/target");
        let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["build", "--release", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = target.join("wasm32-wasip2/release/my_policy.wasm");
        let opts = crate::tools::policy::CheckOptions {
            topics: TEMPLATE_CHECK_TOPICS.map(String::from).to_vec(),
            ..Default::default()
        };
        let report = crate::tools::policy::check_policy(&wasm, &opts).unwrap();
        assert!(report.passed(), "{}\n{:?}", report.text, report.failures);
        let text = &report.text;
        assert!(text.contains("key `kek-orders`"), "{text}");
        assert!(text.contains("public.news: pass all"), "{text}");
        assert!(text.contains("mixed.events: decide per record"), "{text}");
    }
}
