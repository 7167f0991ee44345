//! Unit tests of the Vault client: configuration, error classification, deadlines.

use super::*;

fn cfg() -> VaultKmsConfig {
    serde_norway::from_str("address: http://127.0.0.1:1\ntoken_env: KAPSULE_TEST_UNSET_TOKEN\n")
        .unwrap()
}

#[test]
fn validation_reports_every_problem() {
    let mut c = cfg();
    c.address = "not a url".into();
    c.token_file = Some("/t".into());
    c.mount = "/transit".into();
    c.timeout_ms = 1;
    c.retries = 99;
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert_eq!(p.len(), 5, "{p:?}");
    let mut p = Vec::new();
    cfg().validate("kms", &mut p);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn classification_of_api_errors() {
    let e = |code, msg: &str| ClientError::APIError {
        code,
        errors: vec![msg.to_owned()],
    };
    assert_eq!(
        classify(&e(503, "Vault is sealed")).0,
        KmsErrorKind::Transient
    );
    assert_eq!(classify(&e(429, "rate")).0, KmsErrorKind::Transient);
    assert_eq!(
        classify(&e(403, "permission denied")).0,
        KmsErrorKind::PermissionDenied
    );
    assert_eq!(
        classify(&e(400, "encryption key not found")).0,
        KmsErrorKind::UnknownKey
    );
    assert_eq!(
        classify(&e(400, "cipher: message authentication failed")).0,
        KmsErrorKind::InvalidCiphertext
    );
    assert_eq!(vault_version("vault:v12:abc"), Some(12));
    assert_eq!(vault_version("vault:x:abc"), None);
}

/// A Vault that accepts connections and never answers, as a paused server does.
pub(super) async fn silent_vault() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn retries_stop_at_the_request_deadline() {
    std::env::set_var("KAPSULE_TEST_VAULT_TOKEN_D", "root");
    let (addr, server) = silent_vault().await;
    let mut c = cfg();
    c.address = addr;
    c.token_env = Some("KAPSULE_TEST_VAULT_TOKEN_D".into());
    c.retries = 5;
    c.timeout_ms = 2_000;
    let kms = VaultKms::new(&c).unwrap();
    let start = Instant::now();
    let d = start + Duration::from_millis(700);
    let err = super::super::deadline::scope(Some(d), kms.generate_data_key("k"))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind, KmsErrorKind::Transient, "{err}");
    assert!(
        took < Duration::from_millis(1_200),
        "6 attempts of 2 s were not cut to the 700 ms deadline: {took:?} ({err})"
    );
    server.abort();
}

#[tokio::test]
async fn unreachable_vault_is_transient_after_retries() {
    std::env::set_var("KAPSULE_TEST_VAULT_TOKEN_X", "root");
    let mut c = cfg();
    c.token_env = Some("KAPSULE_TEST_VAULT_TOKEN_X".into());
    c.retries = 1;
    c.timeout_ms = 500;
    let kms = VaultKms::new(&c).unwrap();
    let err = kms.generate_data_key("k").await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Transient, "{err}");
    assert!(err.message.contains("after 2 attempts"), "{err}");
    assert!(VaultKms::new(&cfg()).is_err());
}
