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

/// A policy granting the transit paths of docs/kms.md for `kek-allowed` only.
const ALLOWED_ONLY: &str = r#"
path "transit/keys/kek-allowed" { capabilities = ["read"] }
path "transit/datakey/plaintext/kek-allowed" { capabilities = ["update"] }
path "transit/decrypt/kek-allowed" { capabilities = ["update"] }
path "transit/hmac/kek-allowed" { capabilities = ["update"] }
"#;

/// An OpenBao with a file audit device, transit key `kek-allowed`, AppRole role `kapsule`
/// (policy `policy_hcl`, tokens `token_ttl`/`token_max_ttl`), its role id and secret id in files.
struct AppRoleRig {
    bao: OpenBao,
    dir: tempfile::TempDir,
    secret_id: String,
}

impl AppRoleRig {
    fn start(policy_hcl: &str, token_ttl: &str, token_max_ttl: &str) -> AppRoleRig {
        let dir = tempfile::tempdir().unwrap();
        let bao = OpenBao::start_with_audit_log(&dir.path().join("audit.log")).expect("openbao");
        bao.create_key("kek-allowed").unwrap();
        bao.cli_stdin(&["policy", "write", "kapsule", "-"], policy_hcl)
            .unwrap();
        bao.cli(&["auth", "enable", "approle"]).unwrap();
        bao.cli(&[
            "write",
            "auth/approle/role/kapsule",
            "token_policies=kapsule",
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ])
        .unwrap();
        let role_id = bao
            .cli(&[
                "read",
                "-field=role_id",
                "auth/approle/role/kapsule/role-id",
            ])
            .unwrap();
        std::fs::write(dir.path().join("role_id"), role_id.trim()).unwrap();
        let mut rig = AppRoleRig {
            bao,
            dir,
            secret_id: String::new(),
        };
        rig.new_secret_id();
        rig
    }

    /// Issues a fresh secret id and writes it to the secret id file.
    fn new_secret_id(&mut self) {
        let s = self
            .bao
            .cli(&[
                "write",
                "-f",
                "-field=secret_id",
                "auth/approle/role/kapsule/secret-id",
            ])
            .unwrap();
        self.secret_id = s.trim().to_owned();
        std::fs::write(self.dir.path().join("secret_id"), &self.secret_id).unwrap();
    }

    /// Kapsule in front of `tansu` with the AppRole, encrypting `allowed-*` under `kek-allowed`
    /// and `deny-*` under `kek-<topic>` (outside the grant of [`ALLOWED_ONLY`]).
    async fn kapsule(&self, tansu: &Tansu) -> RawKapsule {
        let yaml = format!(
            "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\nadmin:\n  listen: \"{{admin}}\"\n\
kms:\n  type: vault\n  address: \"{}\"\n  retries: 0\n  auth:\n    method: approle\n    role_id_file: \"{}\"\n    secret_id_file: \"{}\"\n\
policy:\n  rules:\n    - topics: {{prefix: \"allowed-\"}}\n      key_id: kek-allowed\n      value: whole\n    - topics: {{prefix: \"deny-\"}}\n      key_id: \"kek-$${{topic}}\"\n      value: whole\n",
            tansu.bootstrap(),
            self.bao.address(),
            self.dir.path().join("role_id").display(),
            self.dir.path().join("secret_id").display(),
        );
        RawKapsule::start(&yaml).await.expect("kapsule")
    }

    /// Every request path in the audit log with its response count (for failure messages).
    fn audited_paths(&self) -> std::collections::BTreeMap<String, usize> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        let mut paths = std::collections::BTreeMap::new();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "response")
        {
            let p = v["request"]["path"].as_str().unwrap_or("?").to_owned();
            *paths.entry(p).or_insert(0) += 1;
        }
        paths
    }

    /// Audit log responses to requests on `path` made with an AppRole token: (succeeded,
    /// failed).
    fn audited_with_approle_token(&self, path: &str) -> (usize, usize) {
        self.audited_where(path, |v| v["auth"]["display_name"] == "approle")
    }

    /// Audit log responses to requests on `path`: (succeeded, failed).
    fn audited(&self, path: &str) -> (usize, usize) {
        self.audited_where(path, |_| true)
    }

    fn audited_where(
        &self,
        path: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> (usize, usize) {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        let mut ok_failed = (0, 0);
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["type"] != "response" || v["request"]["path"] != path || !keep(&v) {
                continue;
            }
            match v["error"].as_str() {
                Some(e) if !e.is_empty() => ok_failed.1 += 1,
                _ => ok_failed.0 += 1,
            }
        }
        ok_failed
    }
}

/// Kapsule's least time between two logins driven by refused tokens, plus a margin.
fn auth_interval() -> Duration {
    Duration::from_millis(10_500)
}

/// Produces one record to `topic` on a raw connection; returns the partition's error code.
async fn produce_one(kapsule: &RawKapsule, topic: &str) -> i16 {
    use kafka_protocol::messages::{ApiKey, ProduceResponse};
    use kapsule_integration::probe::{produce_request, record_batch, RawConnection};
    let mut c = RawConnection::connect(&kapsule.listen).await.unwrap();
    let req = produce_request(topic, None, 10_000, record_batch(&[(b"k", b"APPROLE")]));
    c.send(ApiKey::Produce, 8, 1, &req).await.unwrap();
    let (_, resp) = c
        .recv_as::<ProduceResponse>(ApiKey::Produce, 8, Duration::from_secs(30))
        .await
        .unwrap();
    resp.responses[0].partition_responses[0].error_code
}

/// Issue 17: a 403 for a key outside the role's grant (what docs/kms.md recommends) made
/// Kapsule log in again, every time: 12 topic names gave 12 logins and 12 tokens. Now a 403
/// with a token Vault still honours is a permission error for that key: 12 such topics cost no
/// login beyond the first, and the refusal says so.
#[tokio::test(flavor = "multi_thread")]
async fn keys_outside_the_roles_grant_cost_no_login() {
    let rig = AppRoleRig::start(ALLOWED_ONLY, "1h", "2h");
    let tansu = Tansu::start().await.expect("tansu");
    let kapsule = rig.kapsule(&tansu).await;
    let allowed = unique_name("allowed-a");
    create_topic(&tansu.bootstrap(), &allowed, 1).await.unwrap();
    assert_eq!(
        produce_one(&kapsule, &allowed).await,
        0,
        "{}",
        kapsule.logs()
    );
    for i in 0..12 {
        let code = produce_one(&kapsule, &format!("deny-{i}")).await;
        assert_ne!(code, 0, "a key outside the grant must not encrypt");
    }
    // Still served with the same token.
    let again = unique_name("allowed-b");
    create_topic(&tansu.bootstrap(), &again, 1).await.unwrap();
    assert_eq!(produce_one(&kapsule, &again).await, 0, "{}", kapsule.logs());
    let logs = kapsule.logs();
    let (logins, failed) = rig.audited("auth/approle/login");
    assert_eq!(
        (logins, failed),
        (1, 0),
        "12 refused keys must not cause logins:\n{logs}"
    );
    assert!(logs.contains("Vault refuses this key to Kapsule"), "{logs}");
    assert!(
        !logs.contains(&rig.secret_id),
        "the secret id must never be logged"
    );
}

/// A re-login (the token's max TTL reached) revokes the token it replaces instead of leaving it
/// valid until its TTL.
#[tokio::test(flavor = "multi_thread")]
async fn a_relogin_revokes_the_replaced_token() {
    let rig = AppRoleRig::start(ALLOWED_ONLY, "4s", "8s");
    let tansu = Tansu::start().await.expect("tansu");
    let kapsule = rig.kapsule(&tansu).await;
    let topic = unique_name("allowed-r");
    create_topic(&tansu.bootstrap(), &topic, 1).await.unwrap();
    assert_eq!(produce_one(&kapsule, &topic).await, 0, "{}", kapsule.logs());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (logins, _) = rig.audited("auth/approle/login");
        let (revoked, _) = rig.audited_with_approle_token("auth/token/revoke-self");
        if logins >= 2 && revoked >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {logins} logins, {revoked} replaced tokens revoked:\n{}",
            kapsule.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        kapsule.logs().contains("revoked the replaced Vault token"),
        "{:?}",
        rig.audited_paths()
    );
}

/// After the operator revokes Kapsule's secret id (and its token), Kapsule's logins back off
/// instead of running into OpenBao's lockout (5 failed logins lock the role for 15 minutes, the
/// fresh secret id included): a minute of client traffic costs one failed login, and the fresh
/// secret id the operator puts in place is used at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_secret_id_does_not_lock_out_the_fresh_one() {
    let mut rig = AppRoleRig::start(ALLOWED_ONLY, "1h", "2h");
    let tansu = Tansu::start().await.expect("tansu");
    let kapsule = rig.kapsule(&tansu).await;
    let first = unique_name("allowed-l");
    create_topic(&tansu.bootstrap(), &first, 1).await.unwrap();
    assert_eq!(produce_one(&kapsule, &first).await, 0, "{}", kapsule.logs());
    // The operator revokes the secret id and every token it logged in.
    rig.bao
        .cli(&[
            "write",
            "auth/approle/role/kapsule/secret-id/destroy",
            &format!("secret_id={}", rig.secret_id),
        ])
        .unwrap();
    rig.bao
        .cli(&["token", "revoke", "-mode=path", "auth/approle/login"])
        .unwrap();
    // Past the minimum interval between logins, clients keep producing (new topics: each needs
    // a data key from Vault): the first refused token leads to one failed login, the rest wait.
    tokio::time::sleep(auth_interval()).await;
    for i in 0..15 {
        let code = produce_one(&kapsule, &format!("allowed-x{i}")).await;
        assert_ne!(code, 0);
    }
    let (_, failed) = rig.audited("auth/approle/login");
    assert!(
        failed == 1,
        "{failed} failed logins while the secret id was revoked:\n{}",
        kapsule.logs()
    );
    // A fresh secret id is picked up at once.
    rig.new_secret_id();
    let last = unique_name("allowed-f");
    create_topic(&tansu.bootstrap(), &last, 1).await.unwrap();
    assert_eq!(produce_one(&kapsule, &last).await, 0, "{}", kapsule.logs());
    let (logins, failed_total) = rig.audited("auth/approle/login");
    assert_eq!(logins, 2, "{}", kapsule.logs());
    assert_eq!(failed_total, 1);
}
