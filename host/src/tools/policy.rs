//! `kapsule policy ...` subcommands: scaffold a policy (Rust, Python, JavaScript or C), check a
//! built policy by running it.
//!
//! `policy check` loads the module exactly as a binding would (compile, link against the sandbox,
//! check the exports, run `init` under the production init deadline), plans each topic, decides
//! sample records (built-in or `--records FILE`), measures the per-record cost and whether a full
//! 1 MiB batch fits the call deadline. Anything that would fail in production fails the check.

mod check_describe;
mod check_findings;
mod check_samples;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use self::check_describe::{describe, describe_decision, describe_reveal, summarize};
use self::check_findings::{exception_failure, memo_mismatches, sdk_exception};
use self::check_samples::full_batch;
use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision, Reveal, TopicPlan};
use crate::policy::config::{BindingConfig, DecryptFailure, LimitsConfig, PolicyConfig};
use crate::policy::rules::TopicSelector;
use crate::policy::wasm::thread_cpu_time;
use crate::policy::{MemoUse, PolicyRegistry};
use crate::principal::{AuthMechanism, Principal};
use crate::tools::scaffold::{self, Lang};

pub use self::check_samples::{builtin_samples, read_records, FULL_BATCH_BYTES};

/// `kapsule policy` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyCommand {
    /// Create a new policy NAME from a template (in the current directory, or --dir) that
    /// builds with one command and passes `kapsule policy check` as generated.
    New {
        /// Policy name: lowercase letters, digits, `-` and `_`, starting with a letter.
        name: String,
        /// Language of the template.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Parent directory of the new policy (default: current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a policy component as Kapsule would: load it, plan each --topic, decide sample
    /// records, report per-record cost and whether a full 1 MiB batch fits the call deadline.
    /// Exits non-zero if anything would fail in production.
    Check {
        /// The policy component (.wasm).
        file: PathBuf,
        /// Config string passed to the policy's init.
        #[arg(long, default_value = "")]
        config: String,
        /// Topic to plan and decide (repeatable; default `orders`).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Key-id glob the policy may use (repeatable; default `*`, anything).
        #[arg(long = "allowed-key-id")]
        allowed_key_ids: Vec<String>,
        /// Sample records, one JSON object per line: {"key": "k", "value": "text" or any
        /// JSON, "headers": {"name": "value"}}; null key/value/header values are nulls.
        /// Default: built-in samples (tenant, classification and PII headers, JSON values of
        /// about 1 KiB, a tombstone).
        #[arg(long)]
        records: Option<PathBuf>,
        /// Base call deadline to check against, in ms (`policy.limits.call_timeout_ms`;
        /// default: Kapsule's default).
        #[arg(long, default_value_t = LimitsConfig::default().call_timeout_ms)]
        call_timeout_ms: u64,
        /// Extra deadline per record of a batch, in µs (`policy.limits.call_timeout_per_record_us`;
        /// default: Kapsule's default).
        #[arg(long, default_value_t = LimitsConfig::default().call_timeout_per_record_us)]
        call_timeout_per_record_us: u64,
        /// Largest call deadline, in ms (`policy.limits.call_timeout_max_ms`; default: Kapsule's
        /// default).
        #[arg(long, default_value_t = LimitsConfig::default().call_timeout_max_ms)]
        call_timeout_max_ms: u64,
        /// Compile into a fresh, empty module cache: the load time is a cold compile.
        #[arg(long)]
        cold: bool,
        /// Call `plan`, `decide` and `reveal` as this SASL/PLAIN principal (default: an
        /// unauthenticated client).
        #[arg(long)]
        principal: Option<String>,
    },
}

/// Options of [`check_policy`] (the `policy check` flags).
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Config string passed to `init`.
    pub config: String,
    /// Topics to plan and decide; empty means `orders`.
    pub topics: Vec<String>,
    /// Key-id globs the policy may use; empty means `*`.
    pub allowed_key_ids: Vec<String>,
    /// Sample records as JSON lines; `None` uses [`builtin_samples`].
    pub records: Option<PathBuf>,
    /// The production call deadlines to compare against: only `call_timeout_ms`,
    /// `call_timeout_per_record_us` and `call_timeout_max_ms` are used. A batch of N records gets
    /// `call_timeout_ms + N × call_timeout_per_record_us`, at most `call_timeout_max_ms`, as in
    /// production.
    pub limits: LimitsConfig,
    /// Compile into a fresh module cache (cold compile).
    pub cold: bool,
    /// The client principal calls are made for; `None`: an unauthenticated client.
    pub principal: Option<Principal>,
}

/// What `policy check` found: the printed report and the problems that fail the check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Human-readable report (plans, decisions, cost, deadline fit).
    pub text: String,
    /// Problems that would make the module fail in production; empty when the check passes.
    pub failures: Vec<String>,
}

impl CheckReport {
    /// True when nothing would fail in production.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs a `kapsule policy` subcommand, printing its report to stdout.
pub fn run_policy_command(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::New { name, lang, dir } => {
            let parent = match dir {
                Some(d) => d,
                None => std::env::current_dir().context("reading the current directory")?,
            };
            let files = scaffold::new_policy(&parent, &name, lang)?;
            println!("created {lang} policy {name}:");
            for f in files {
                println!("  {}", f.display());
            }
            let root = parent.join(&name);
            println!("cd {}", root.display());
            if let Some(setup) = lang.setup_command() {
                println!("install its SDK once: {setup}");
            }
            println!("build it with:        {}", lang.build_command(&name));
            println!(
                "then check it:        kapsule policy check {} --topic {}",
                root.join(lang.artifact(&name)).display(),
                scaffold::TEMPLATE_CHECK_TOPICS.join(" --topic ")
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check {
            file,
            config,
            topics,
            allowed_key_ids,
            records,
            call_timeout_ms,
            call_timeout_per_record_us,
            call_timeout_max_ms,
            cold,
            principal,
        } => {
            let opts = CheckOptions {
                config,
                topics,
                allowed_key_ids,
                records,
                limits: LimitsConfig {
                    call_timeout_ms,
                    call_timeout_per_record_us,
                    call_timeout_max_ms,
                    ..LimitsConfig::default()
                },
                cold,
                principal: principal.map(|p| Principal::new(p, AuthMechanism::SaslPlain)),
            };
            match check_policy(&file, &opts) {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.passed() {
                        println!("check passed");
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!("policy check failed:");
                        for f in &report.failures {
                            eprintln!("  - {f}");
                        }
                        Ok(ExitCode::FAILURE)
                    }
                }
                Err(e) => {
                    eprintln!("policy check failed: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// Loads `file` exactly as a binding would (compile, link against the sandbox, check the
/// exports, run `init` with `opts.config` under the production init deadline), then plans each
/// topic and, for per-record topics, decides the sample records, measures the cost per record
/// and times a full 1 MiB batch against the call deadline production gives a batch that size
/// (`opts.limits`).
///
/// Returns `Err` when the module cannot be loaded (the reason a binding would refuse it) or the
/// records file is invalid; otherwise a report whose `failures` list what would fail in
/// production (plan or decide errors, disallowed key ids, a full batch over the deadline).
pub fn check_policy(file: &Path, opts: &CheckOptions) -> anyhow::Result<CheckReport> {
    let samples = match &opts.records {
        Some(p) => read_records(p)?,
        None => builtin_samples(),
    };
    let allowed = if opts.allowed_key_ids.is_empty() {
        vec!["*".to_string()]
    } else {
        opts.allowed_key_ids.clone()
    };
    let cold_dir = if opts.cold {
        Some(ColdCache::new()?)
    } else {
        None
    };
    let production = crate::policy::wasm::Limits::from(&opts.limits);
    // The largest deadline production gives any call.
    let deadline_ms =
        u64::try_from(production.decide_budget(usize::MAX).as_millis()).unwrap_or(u64::MAX);
    let c = PolicyConfig {
        bindings: vec![BindingConfig {
            topics: TopicSelector::Glob("*".into()),
            module: file.to_path_buf(),
            config: opts.config.clone(),
            allowed_key_ids: allowed,
            on_decrypt_failure: DecryptFailure::Error,
            require_encrypted: false,
            accept_pre_encrypted: false,
        }],
        module_cache_dir: cold_dir.as_ref().map(|d| d.0.clone()),
        limits: LimitsConfig {
            // Calls get room to be measured; the production deadline is compared afterwards, so
            // a slow policy is reported with its real cost instead of a bare "deadline".
            call_timeout_ms: deadline_ms.saturating_mul(20).clamp(2000, 60_000),
            call_timeout_max_ms: 60_000,
            ..LimitsConfig::default()
        },
        ..PolicyConfig::default()
    };
    let mut problems = Vec::new();
    c.validate("check", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    let started = Instant::now();
    let reg = PolicyRegistry::new(&c)?;
    let load = started.elapsed();
    reg.capture_guest_traces();
    let st = reg.status();
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let mut out = format!(
        "{}: OK (sha256 {}, {:.1} MiB, implements kapsule:policy/policy@{}, init accepted the config)\n\
         loaded in {} ms ({}compile + instantiate + init)\n\
         calls are made for {}\n",
        file.display(),
        st.bindings[0].content_hash,
        size as f64 / 1_048_576.0,
        st.bindings[0].wit_version,
        load.as_millis(),
        if opts.cold { "cold " } else { "cached or cold " },
        match &opts.principal {
            Some(p) => format!("principal {p}"),
            None => "an unauthenticated client (use --principal NAME to name one)".into(),
        },
    );
    if DEBUG_BUILD {
        out.push_str(
            "note: this kapsule is a debug build; compile times and costs are several times a \
             release build's\n",
        );
    }
    let mut failures = Vec::new();
    let default_topic = ["orders".to_string()];
    let topics = if opts.topics.is_empty() {
        &default_topic[..]
    } else {
        &opts.topics[..]
    };
    for t in topics {
        check_topic(
            &reg,
            t,
            opts.principal.as_ref(),
            &samples,
            &production,
            &mut out,
            &mut failures,
        );
    }
    Ok(CheckReport {
        text: out,
        failures,
    })
}

fn check_topic(
    reg: &PolicyRegistry,
    topic: &str,
    principal: Option<&Principal>,
    samples: &[Record],
    production: &crate::policy::wasm::Limits,
    out: &mut String,
    failures: &mut Vec<String>,
) {
    let plan = match reg.topic_plan(topic, principal) {
        Ok(p) => p,
        Err(e) => {
            out.push_str(&format!("topic {topic}: ERROR {e}\n"));
            failures.push(format!("topic {topic}: plan failed: {e}"));
            return;
        }
    };
    out.push_str(&format!("topic {topic}: {}\n", describe(&plan)));
    if let TopicPlan::RejectAll(m) = &plan {
        if sdk_exception(m).is_some() {
            let traces = reg.take_guest_traces();
            failures.push(exception_failure(
                &format!("topic {topic}: plan"),
                m,
                &traces,
            ));
        }
    }
    match reg.reveal(topic, principal) {
        Ok(Reveal::Deny(m)) if sdk_exception(&m).is_some() => {
            out.push_str(&format!("  on fetch this client reads: nothing: {m}\n"));
            let traces = reg.take_guest_traces();
            failures.push(exception_failure(
                &format!("topic {topic}: reveal"),
                &m,
                &traces,
            ));
        }
        Ok(r) => out.push_str(&format!(
            "  on fetch this client reads: {}\n",
            describe_reveal(&r)
        )),
        Err(e) => {
            out.push_str(&format!("  reveal: ERROR {e}\n"));
            failures.push(format!("topic {topic}: reveal failed: {e}"));
        }
    }
    if !matches!(plan, TopicPlan::PerRecord(_)) {
        return;
    }
    let calls = || reg.status().bindings[0].calls;
    let calls_before = calls();
    let first = Instant::now();
    // As production decides, minus the audits: what the memo alone answers.
    let decided = match reg.decide_using(
        topic,
        principal,
        BASE_TIMESTAMP,
        samples,
        MemoUse::Unaudited,
    ) {
        Ok(d) => d,
        Err(e) => {
            out.push_str(&format!("  decide: ERROR {e}\n"));
            failures.push(format!("topic {topic}: decide failed: {e}"));
            return;
        }
    };
    let first = first.elapsed();
    let memo_calls = calls() - calls_before;
    let memo = reg.memo_key(topic, principal).unwrap_or_default();
    // Every sample decided again with the module shown each record: what it really decides.
    let own = if memo == MemoKey::None {
        decided.clone()
    } else {
        match reg.decide_using(topic, principal, BASE_TIMESTAMP, samples, MemoUse::Off) {
            Ok(d) => d,
            Err(e) => {
                out.push_str(&format!("  decide without the memo: ERROR {e}\n"));
                failures.push(format!(
                    "topic {topic}: decide without the memo failed: {e}"
                ));
                return;
            }
        }
    };
    let traces = reg.take_guest_traces();
    let mut seen = std::collections::HashSet::new();
    for (i, (r, d)) in samples.iter().zip(&own).enumerate() {
        if let RecordDecision::Reject(m) = d {
            if sdk_exception(m).is_some() && seen.insert(m.clone()) {
                let what = format!("topic {topic}: record {i} {}", summarize(r));
                failures.push(exception_failure(&what, m, &traces));
            }
        }
    }
    failures.extend(memo_mismatches(
        topic,
        &memo,
        samples,
        &decided,
        &own,
        summarize,
        describe_decision,
    ));
    if memo != MemoKey::None {
        let values = reg.status().bindings[0].memoized_values;
        out.push_str(&format!(
            "  memo key: {memo}: {values} distinct value(s) in {} sample records, decided in \
             {} guest call(s); later batches reuse these decisions without calling the policy \
             (first batch {:.1} µs per record)\n",
            samples.len(),
            memo_calls,
            first.as_nanos() as f64 / 1000.0 / samples.len().max(1) as f64,
        ));
    } else {
        out.push_str("  memo key: none (every record of every batch is shown to decide)\n");
    }
    for (i, (r, (d, o))) in samples
        .iter()
        .zip(decided.iter().zip(&own))
        .enumerate()
        .take(MAX_PRINTED)
    {
        let wrong = if d == o {
            String::new()
        } else {
            format!(
                " <- MEMO MISMATCH: decide gives `{}` for this record",
                describe_decision(o)
            )
        };
        out.push_str(&format!(
            "  record {i} {}: {}{wrong}\n",
            summarize(r),
            describe_decision(d)
        ));
    }
    if samples.len() > MAX_PRINTED {
        out.push_str(&format!(
            "  ... {} more records\n",
            samples.len() - MAX_PRINTED
        ));
    }
    // Cost per record on the samples: repeat until about 200 ms have run, keep the median.
    let mut times = Vec::new();
    let measuring = Instant::now();
    while times.len() < 3 || (measuring.elapsed() < Duration::from_millis(200) && times.len() < 50)
    {
        let t = thread_cpu_time();
        let decided = reg.decide_using(
            topic,
            principal,
            BASE_TIMESTAMP,
            samples,
            MemoUse::Unaudited,
        );
        if let Err(e) = decided {
            failures.push(format!("topic {topic}: decide failed when repeated: {e}"));
            return;
        }
        times.push(thread_cpu_time().saturating_sub(t));
    }
    let per_record = median(&mut times).as_nanos() as f64 / samples.len().max(1) as f64;
    out.push_str(&format!(
        "  cost: {:.1} µs of CPU per record (median of {} {} on {} sample records, the call's fixed cost included)\n",
        per_record / 1000.0,
        times.len(),
        if memo == MemoKey::None {
            "calls"
        } else {
            "batches answered from the memo cache"
        },
        samples.len()
    ));
    // A full batch: the samples repeated to 1 MiB, timed against the production deadline.
    let full = full_batch(samples);
    let deadline = production.decide_budget(full.len());
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = thread_cpu_time();
        let decided = reg.decide_using(topic, principal, BASE_TIMESTAMP, &full, MemoUse::Unaudited);
        if let Err(e) = decided {
            out.push_str(&format!("  full batch: ERROR {e}\n"));
            failures.push(format!(
                "topic {topic}: a full 1 MiB batch ({} records) failed: {e}",
                full.len()
            ));
            return;
        }
        times.push(thread_cpu_time().saturating_sub(t));
    }
    let took = median(&mut times);
    let share = took.as_secs_f64() / deadline.as_secs_f64().max(1e-9) * 100.0;
    let verdict = if took > deadline && DEBUG_BUILD {
        "does NOT fit (advisory: this kapsule is a debug build, several times slower than a \
         release build; check with a release build)"
    } else if took > deadline {
        failures.push(format!(
            "topic {topic}: a full 1 MiB batch ({} records) takes {:.1} ms, over the {} ms call \
             deadline: production would refuse such batches",
            full.len(),
            took.as_secs_f64() * 1000.0,
            deadline.as_millis()
        ));
        "does NOT fit"
    } else if share > 50.0 {
        "fits, with little margin (over half the deadline; a loaded machine may exceed it)"
    } else {
        "fits with margin"
    };
    out.push_str(&format!(
        "  full 1 MiB batch ({} records): {:.2} ms of CPU, {:.2} µs per record = {share:.0}% of its {} ms call deadline (CPU time: base + per record, capped): {verdict}\n",
        full.len(),
        took.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1e6 / full.len().max(1) as f64,
        deadline.as_millis()
    ));
}

/// A fresh module cache directory for `--cold` (created by the runtime, mode 0700), removed on
/// drop.
struct ColdCache(PathBuf);

impl ColdCache {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "kapsule-policy-check-{}-{nanos}",
            std::process::id()
        ));
        if dir.exists() {
            anyhow::bail!("temporary module cache {} already exists", dir.display());
        }
        Ok(Self(dir))
    }
}

impl Drop for ColdCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debug builds of Kapsule marshal batches several times slower than release builds, so their
/// full-batch timing is reported but does not fail the check.
const DEBUG_BUILD: bool = cfg!(debug_assertions);

const BASE_TIMESTAMP: i64 = 1_767_225_600_000;
const MAX_PRINTED: usize = 20;

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(config: &str, topics: &[&str], allowed: &[&str]) -> CheckOptions {
        CheckOptions {
            config: config.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            allowed_key_ids: allowed.iter().map(|t| t.to_string()).collect(),
            ..CheckOptions::default()
        }
    }

    #[test]
    fn check_reports_plans_and_refusals() {
        let a = kapsule_test_fixtures::policy_artifacts().unwrap();
        let r = check_policy(
            &a.path("encrypt-all"),
            &opts("kek-${topic}", &["orders"], &[]),
        )
        .unwrap();
        assert!(r.passed(), "{:?}", r.failures);
        assert!(r.text.contains("OK (sha256"), "{}", r.text);
        assert!(
            r.text
                .contains("topic orders: encrypt all records with key `kek-orders`: whole value"),
            "{}",
            r.text
        );
        // A key id outside allowed_key_ids fails the check (production would refuse it).
        let r = check_policy(&a.path("encrypt-all"), &opts("", &["orders"], &["other-*"])).unwrap();
        assert!(!r.passed());
        assert!(
            r.text.contains("ERROR") && r.text.contains("allowed_key_ids"),
            "{}",
            r.text
        );
        let e =
            check_policy(&a.path("hostile-misbehave"), &opts("init-error", &[], &[])).unwrap_err();
        assert!(format!("{e:#}").contains("refuses its config"), "{e:#}");
    }

    #[test]
    fn check_decides_samples_and_times_a_full_batch() {
        let a = kapsule_test_fixtures::policy_artifacts().unwrap();
        let r = check_policy(&a.path("tenant-keys"), &opts("", &["events"], &[])).unwrap();
        assert!(r.passed(), "{}\n{:?}", r.text, r.failures);
        assert!(
            r.text.contains("record 2 (key \"o-3\"")
                && r.text
                    .contains("encrypt with key `tenant-globex`: whole value"),
            "{}",
            r.text
        );
        assert!(r.text.contains("µs per record"), "{}", r.text);
        assert!(r.text.contains("full 1 MiB batch (1"), "{}", r.text);
        // A policy that loops in decide fails its check instead of failing in production.
        let r = check_policy(
            &a.path("hostile-misbehave"),
            &opts("loop-decide", &["events"], &[]),
        )
        .unwrap();
        assert!(!r.passed(), "{}", r.text);
        assert!(r.failures[0].contains("decide failed"), "{:?}", r.failures);
    }

    #[test]
    fn check_shows_the_principal_the_memo_key_and_the_reveal() {
        let a = kapsule_test_fixtures::policy_artifacts().unwrap();
        let r = check_policy(&a.path("tenant-keys"), &opts("", &["events"], &[])).unwrap();
        assert!(r.passed(), "{}\n{:?}", r.text, r.failures);
        assert!(r.text.contains("kapsule:policy/policy@0.3.0"), "{}", r.text);
        assert!(r.text.contains("an unauthenticated client"), "{}", r.text);
        assert!(
            r.text.contains("memo key: header `tenant`")
                && r.text.contains("answered from the memo cache"),
            "{}",
            r.text
        );
        let mut o = opts("", &["orders"], &[]);
        o.principal = Some(Principal::new("analytics", AuthMechanism::SaslPlain));
        let r = check_policy(&a.path("reveal-by-principal"), &o).unwrap();
        assert!(r.passed(), "{}\n{:?}", r.text, r.failures);
        assert!(r.text.contains("principal analytics (PLAIN)"), "{}", r.text);
        assert!(r.text.contains("kek-analytics"), "{}", r.text);
        assert!(
            r.text.contains("only JSON fields /card in clear"),
            "{}",
            r.text
        );
        o.principal = Some(Principal::new("bad-pointer", AuthMechanism::SaslPlain));
        let r = check_policy(&a.path("reveal-by-principal"), &o).unwrap();
        assert!(!r.passed(), "{}", r.text);
        assert!(r.failures[0].contains("reveal failed"), "{:?}", r.failures);
    }

    #[test]
    fn a_full_batch_is_judged_against_the_budget_production_gives_its_size() {
        let a = kapsule_test_fixtures::policy_artifacts().unwrap();
        let mut o = opts("", &["events"], &[]);
        o.limits.call_timeout_ms = 10;
        o.limits.call_timeout_per_record_us = 200;
        o.limits.call_timeout_max_ms = 5_000;
        let r = check_policy(&a.path("tenant-keys"), &o).unwrap();
        let records = full_batch(&builtin_samples()).len();
        let budget_ms = 10 + records * 200 / 1000;
        assert!(
            r.text
                .contains(&format!("of its {budget_ms} ms call deadline")),
            "expected {budget_ms} ms for {records} records:\n{}",
            r.text
        );
        // The cap applies too.
        o.limits.call_timeout_max_ms = 40;
        let r = check_policy(&a.path("tenant-keys"), &o).unwrap();
        assert!(r.text.contains("of its 40 ms call deadline"), "{}", r.text);
    }
}
