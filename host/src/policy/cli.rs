//! `kapsule policy ...` subcommands: scaffold a policy crate, check a built policy.
//!
//! The lead wires [`PolicyCommand`] into the top-level clap parser (e.g. as
//! `Policy { #[command(subcommand)] cmd: PolicyCommand }`) and calls [`run_policy_command`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::config::{BindingConfig, DecryptFailure, LimitsConfig, PolicyConfig};
use super::rules::TopicSelector;
use super::{PolicyRegistry, TopicPlan};
use crate::plan::ValuePart;

/// `kapsule policy` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyCommand {
    /// Create a new Rust policy crate NAME (in the current directory, or --dir).
    New {
        /// Crate name: lowercase letters, digits, `-` and `_`.
        name: String,
        /// Parent directory of the new crate (default: current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the `kapsule-policy` SDK crate to depend on (default: the SDK of the
        /// Kapsule source tree this binary was built from, if it still exists).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Compile a policy component, check it against the policy world, run its init and print
    /// its plan for each --topic.
    Check {
        /// The policy component (.wasm).
        file: PathBuf,
        /// Config string passed to the policy's init.
        #[arg(long, default_value = "")]
        config: String,
        /// Topic to plan (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Key-id glob the policy may use (repeatable; default `*`, anything).
        #[arg(long = "allowed-key-id")]
        allowed_key_ids: Vec<String>,
    },
}

/// Runs a `kapsule policy` subcommand, printing its report to stdout.
pub fn run_policy_command(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::New {
            name,
            dir,
            sdk_path,
        } => {
            let parent = match dir {
                Some(d) => d,
                None => std::env::current_dir().context("reading the current directory")?,
            };
            let files = super::scaffold::new_policy(&parent, &name, sdk_path.as_deref())?;
            println!("created policy crate {name}:");
            for f in files {
                println!("  {}", f.display());
            }
            println!(
                "build it with: cd {} && cargo build --release --target wasm32-wasip2",
                parent.join(&name).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check {
            file,
            config,
            topics,
            allowed_key_ids,
        } => match check_policy(file, &config, &topics, &allowed_key_ids) {
            Ok(report) => {
                print!("{report}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("policy check failed: {e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// Loads `file` exactly as a binding would (compile, link against the sandbox, check the
/// exports, run `init` with `config`), then plans each topic. Returns a human-readable report;
/// fails with the reason the module would be refused.
pub fn check_policy(
    file: PathBuf,
    config: &str,
    topics: &[String],
    allowed_key_ids: &[String],
) -> anyhow::Result<String> {
    let allowed = if allowed_key_ids.is_empty() {
        vec!["*".to_string()]
    } else {
        allowed_key_ids.to_vec()
    };
    let c = PolicyConfig {
        bindings: vec![BindingConfig {
            topics: TopicSelector::Glob("*".into()),
            module: file.clone(),
            config: config.to_string(),
            allowed_key_ids: allowed,
            on_decrypt_failure: DecryptFailure::Error,
            require_encrypted: false,
            accept_pre_encrypted: false,
        }],
        limits: LimitsConfig {
            // A one-off check on a possibly cold machine: be generous, report the time.
            call_timeout_ms: 1000,
            ..LimitsConfig::default()
        },
        ..PolicyConfig::default()
    };
    let mut problems = Vec::new();
    c.validate("check", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let reg = PolicyRegistry::new(&c)?;
    let st = reg.status();
    let mut out = format!(
        "{}: OK (sha256 {}, implements kapsule:policy/policy@0.1.0, init accepted the config)\n",
        file.display(),
        st.bindings[0].content_hash
    );
    for t in topics {
        let line = match reg.topic_plan(t) {
            Ok(p) => describe(&p),
            Err(e) => format!("ERROR {e}"),
        };
        out.push_str(&format!("  topic {t}: {line}\n"));
    }
    Ok(out)
}

fn describe(p: &TopicPlan) -> String {
    match p {
        TopicPlan::PassAll => "pass all records".into(),
        TopicPlan::RejectAll(m) => format!("reject all records: {m}"),
        TopicPlan::PerRecord(n) => {
            let mut parts = Vec::new();
            if n.key {
                parts.push("key");
            }
            if n.value {
                parts.push("value");
            }
            if n.headers {
                parts.push("headers");
            }
            format!(
                "decide per record batch, seeing [{}] (+ timestamp)",
                parts.join(", ")
            )
        }
        TopicPlan::EncryptAll(e) => {
            let value = match &e.value {
                ValuePart::None => "no value".to_string(),
                ValuePart::Whole => "whole value".to_string(),
                ValuePart::JsonFields(f) => format!("JSON fields {}", f.join(", ")),
            };
            format!(
                "encrypt all records with key `{}`: {value}{}{}",
                e.key_id,
                if e.record_key { ", record key" } else { "" },
                if e.headers.is_empty() {
                    String::new()
                } else {
                    format!(", headers {}", e.headers.join(", "))
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_plans_and_refusals() {
        let a = super::super::fixtures::build_policies().unwrap();
        let r = check_policy(
            a.path("encrypt-all"),
            "kek-${topic}",
            &["orders".into()],
            &[],
        )
        .unwrap();
        assert!(r.contains("OK (sha256"), "{r}");
        assert!(
            r.contains("topic orders: encrypt all records with key `kek-orders`: whole value"),
            "{r}"
        );
        let r = check_policy(
            a.path("encrypt-all"),
            "",
            &["orders".into()],
            &["other-*".into()],
        )
        .unwrap();
        assert!(r.contains("ERROR") && r.contains("allowed_key_ids"), "{r}");
        let e = check_policy(a.path("hostile-misbehave"), "init-error", &[], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("refuses its config"), "{e:#}");
    }
}
