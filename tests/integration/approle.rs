//! Vault AppRole login against a real OpenBao with short token TTLs, under a steady produce.

use std::time::Duration;

use kapsule_integration::openbao::OpenBao;
use kapsule_integration::tls::{create_topic, RawKapsule};
use kapsule_integration::{run_python, unique_name, Tansu};

use crate::common::{args, ck_consume};

/// The least-privilege policy documented in docs/kms.md (first ```hcl block).
fn documented_policy() -> String {
    let doc = include_str!("../../docs/kms.md");
    let start = doc.find("```hcl\n").expect("docs/kms.md has an hcl block") + 7;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

/// Tokens live 5 s (12 s at most, so renewals run out and Kapsule must log in again) while
/// confluent-kafka produces to an encrypted topic for 30 s with DEKs retired every 2 s (so Vault
/// is called throughout): no produce fails, Kapsule logged in several times, and the records
/// read back decrypted.
#[tokio::test(flavor = "multi_thread")]
async fn approle_tokens_are_renewed_and_replaced_under_steady_produce() {
    let bao = OpenBao::start().expect("openbao");
    bao.create_key("kek-approle").unwrap();
    bao.cli_stdin(&["policy", "write", "kapsule", "-"], &documented_policy())
        .unwrap();
    bao.cli(&["auth", "enable", "approle"]).unwrap();
    bao.cli(&[
        "write",
        "auth/approle/role/kapsule",
        "token_policies=kapsule",
        "token_ttl=5s",
        "token_max_ttl=12s",
    ])
    .unwrap();
    let role_id = bao
        .cli(&[
            "read",
            "-field=role_id",
            "auth/approle/role/kapsule/role-id",
        ])
        .unwrap();
    let secret_id = bao
        .cli(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/kapsule/secret-id",
        ])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (role_file, secret_file) = (dir.path().join("role_id"), dir.path().join("secret_id"));
    std::fs::write(&role_file, role_id.trim()).unwrap();
    std::fs::write(&secret_file, secret_id.trim()).unwrap();

    let tansu = Tansu::start().await.expect("tansu");
    let yaml = format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\nadmin:\n  listen: \"{{admin}}\"\n\
kms:\n  type: vault\n  address: \"{}\"\n  auth:\n    method: approle\n    role_id_file: \"{}\"\n    secret_id_file: \"{}\"\n\
deks:\n  max_age_secs: 2\n  decrypted_cache_ttl_secs: 1\n\
policy:\n  rules:\n    - topics: {{prefix: \"whole-\"}}\n      key_id: kek-approle\n      value: whole\n",
        tansu.bootstrap(),
        bao.address(),
        role_file.display(),
        secret_file.display()
    );
    let kapsule = RawKapsule::start(&yaml).await.expect("kapsule");
    let topic = unique_name("whole-approle");
    create_topic(&tansu.bootstrap(), &topic, 1).await.unwrap();

    let out = run_python(
        "ck_steady.py",
        &args(&[
            "--bootstrap",
            &kapsule.listen,
            "--topic",
            &topic,
            "--seconds",
            "30",
            "--rate",
            "50",
            "--prefix",
            "APPROLE",
        ]),
        Duration::from_secs(120),
    )
    .await
    .expect("steady produce");
    let logs = kapsule.logs();
    assert_eq!(out.json["failed"], 0, "{}\n{logs}", out.json);
    let sent = out.json["sent"].as_u64().unwrap() as usize;
    assert!(sent > 1000, "{}", out.json);
    let logins = logs.matches("Vault AppRole login succeeded").count();
    assert!(
        logins >= 3,
        "30 s with token_max_ttl=12s needs at least 3 logins, saw {logins}:\n{logs}"
    );
    let renewals = logs.matches("Vault token renewed").count();
    assert!(
        renewals >= 3,
        "tokens must be renewed ahead of expiry, saw {renewals} renewals:\n{logs}"
    );
    assert!(
        !logs.contains("Vault refused the AppRole token"),
        "tokens must be replaced before they expire, not after a 403:\n{logs}"
    );
    assert!(
        !logs.contains(secret_id.trim()),
        "the secret id must never be logged"
    );
    let back = ck_consume(&kapsule.listen, &topic, sent, &[]).await;
    assert_eq!(back.len(), sent);
    assert_eq!(back[0].record.value.as_deref(), Some(&b"APPROLE-0"[..]));
}
