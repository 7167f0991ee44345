//! `kapsule policy new --lang rust|python|js|c` as a policy author outside this repository meets
//! it: the `kapsule` binary is copied alone into an empty directory (no checkout beside it, so
//! nothing compiled into it can point back at the source tree), the template is written into
//! another, installed and built with the commands its README documents (pip into a fresh
//! virtualenv, npm install from the SDK copy the binary wrote, cargo, the C build script), and
//! must pass `kapsule policy check` with the production call deadline as generated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kapsule_integration::kapsule::kapsule_bin;
use kapsule_test_fixtures::repo_root;

use crate::polyglot::policy_check;

/// The kapsule binary alone in a directory of its own: hard-linked (a debug build is hundreds of
/// MB, and four templates run at once), copied when the directory is on another file system.
fn lone_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("kapsule");
    let built = kapsule_bin().expect("kapsule binary");
    if std::fs::hard_link(&built, &bin).is_err() {
        std::fs::copy(&built, &bin).expect("copy the kapsule binary");
    }
    bin
}

/// Runs `sh -c command` in `dir` with `path_prefix` first on PATH; asserts success.
async fn run_documented(dir: &Path, command: &str, path_prefix: Option<&Path>, what: &str) {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(command).current_dir(dir).kill_on_drop(true);
    // What the author's shell would have: no cargo target dir or flags of this test run.
    c.env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("PYTHONPATH");
    if let Some(prefix) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", prefix.display()));
    }
    let out = tokio::time::timeout(Duration::from_secs(900), c.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: `{command}` finishes"))
        .unwrap_or_else(|e| panic!("{what}: run `{command}`: {e}"));
    assert!(
        out.status.success(),
        "{what}: `{command}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scaffolds `lang` with a lone binary, runs the setup and build commands `policy new` prints,
/// and checks the component.
async fn template_builds_and_passes_check(lang: &str) {
    let bin_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bin = lone_binary(bin_dir.path());
    let name = format!("tpl-{lang}");
    // A just-copied binary can be "busy" for a moment: a process another test forks meanwhile
    // holds the copy's write descriptor until it execs. Retry that, nothing else.
    let mut tries = 0;
    let out = loop {
        match tokio::process::Command::new(&bin)
            .args(["policy", "new", &name, "--lang", lang])
            .current_dir(work.path())
            .output()
            .await
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other.expect("run the lone kapsule binary"),
        }
    };
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = work.path().join(&name);
    let documented = |label: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|c| c.trim().to_string())
    };
    let build = documented("build it with:").unwrap_or_else(|| panic!("{printed}"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains(&build), "README lacks `{build}`:\n{readme}");

    // Python installs into a virtualenv of its own (seeing the machine's componentize-py), outside
    // the policy's directory as an author would keep it.
    let venv = work.path().join("venv");
    let mut path_prefix = None;
    if lang == "python" {
        run_documented(
            work.path(),
            "python3 -m venv --system-site-packages venv",
            None,
            "virtualenv",
        )
        .await;
        path_prefix = Some(venv.join("bin"));
    }
    if let Some(setup) = documented("install its SDK once:") {
        run_documented(&root, &setup, path_prefix.as_deref(), lang).await;
    }
    let mut build_cmd = build.clone();
    let wasm = if lang == "rust" {
        // Reuse the policies workspace's target dir: wit-bindgen is built there already.
        let target = repo_root().join("policies/target");
        build_cmd = format!("CARGO_TARGET_DIR={} {build}", target.display());
        target.join("wasm32-wasip2/release/tpl_rust.wasm")
    } else {
        root.join(format!("{name}.wasm"))
    };
    run_documented(&root, &build_cmd, path_prefix.as_deref(), lang).await;
    if lang == "python" {
        assert!(
            venv.join("bin/kapsule-policy-build").is_file(),
            "the SDK was not installed into the virtualenv"
        );
    }

    let (ok, report) = policy_check(
        &wasm,
        &[
            "--topic",
            "orders",
            "--topic",
            "public.news",
            "--topic",
            "mixed.events",
        ],
    )
    .await;
    assert!(ok, "{report}");
    for want in [
        "topic orders: encrypt all records with key `kek-orders`: whole value",
        "topic public.news: pass all records",
        "record 1 (key \"o-2\"",
        "encrypt with key `kek-mixed.events`: whole value",
        "check passed",
    ] {
        assert!(report.contains(want), "missing `{want}` in:\n{report}");
    }
    // Record 1 of the built-in samples is `classification: public`.
    assert!(
        report
            .lines()
            .any(|l| l.contains("record 1 (key \"o-2\"") && l.ends_with(": pass")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_rust_builds_from_a_lone_binary_and_passes_check() {
    template_builds_and_passes_check("rust").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn template_python_builds_from_a_lone_binary_and_passes_check() {
    template_builds_and_passes_check("python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn template_js_builds_from_a_lone_binary_and_passes_check() {
    template_builds_and_passes_check("js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn template_c_builds_from_a_lone_binary_and_passes_check() {
    template_builds_and_passes_check("c").await;
}
