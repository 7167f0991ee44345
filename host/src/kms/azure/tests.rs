//! Unit tests of the Azure Key Vault client against a scripted server that answers as Entra ID
//! and Key Vault do (the JSON shapes of the REST API reference: token answers, `kid` + base64url
//! `value`). Its "wrap" is a byte-wise XOR with the key version, so unwrapping under the wrong
//! version fails as it would in Key Vault. NOT run against Azure or an emulator: none that
//! implements wrapKey/unwrapKey installs from the registries this project uses (docs/kms.md
//! lists those tried). `test-client-certificate.pem` is a self-signed test certificate and key
//! made for these tests only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::*;
use crate::kms::test_server::{scripted_server, Seen};

fn xor(data: &[u8], version: &str) -> Vec<u8> {
    data.iter()
        .zip(version.bytes().cycle())
        .map(|(a, b)| a ^ b)
        .collect()
}

/// Entra ID and Key Vault in one: tokens `tok-N`, wrap under `current` version, unwrap under the
/// version in the path; `fail(n, request)` may replace any answer.
fn key_vault(
    current: Arc<parking_lot::Mutex<String>>,
    fail: impl Fn(usize, &Seen) -> Option<(u16, String)> + Send + Sync + 'static,
) -> crate::kms::test_server::Script {
    let tokens = AtomicU32::new(0);
    Box::new(move |n, req| {
        if let Some(answer) = fail(n, req) {
            return answer;
        }
        let target = req
            .target()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        if target.ends_with("/oauth2/v2.0/token") || target == "/metadata/identity/oauth2/token" {
            let t = tokens.fetch_add(1, Ordering::Relaxed);
            return (
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("tok-{t}")})
                    .to_string(),
            );
        }
        let parts: Vec<&str> = target.trim_start_matches('/').split('/').collect();
        let value = B64URL
            .decode(req.json()["value"].as_str().unwrap_or_default())
            .unwrap_or_default();
        match parts.as_slice() {
            ["keys", name, "wrapkey"] => {
                let v = current.lock().clone();
                (
                    200,
                    json!({"kid": format!("https://kv/keys/{name}/{v}"), "value": B64URL.encode(xor(&value, &v))})
                        .to_string(),
                )
            }
            ["keys", name, v, "unwrapkey"] => (
                200,
                json!({"kid": format!("https://kv/keys/{name}/{v}"), "value": B64URL.encode(xor(&value, v))})
                    .to_string(),
            ),
            ["keys", name, v, "sign"] => (
                200,
                json!({"kid": format!("https://kv/keys/{name}/{v}"), "value": B64URL.encode(xor(&value, "sig"))})
                    .to_string(),
            ),
            ["keys", name] => (
                200,
                json!({"key": {"kid": format!("https://kv/keys/{name}/v1"), "kty": "RSA"}, "attributes": {"enabled": true}})
                    .to_string(),
            ),
            _ => (404, json!({"error": {"code": "KeyNotFound", "message": "no such key"}}).to_string()),
        }
    })
}

fn config(addr: &str, credential: &str) -> AzureKmsConfig {
    std::env::set_var("KAPSULE_TEST_AZURE_SECRET", "azure-test-secret");
    serde_norway::from_str(&format!(
        "vault_url: \"{addr}\"\nkey_template: \"kapsule-{{key_id}}\"\nscope: https://vault.azure.net/.default\nkeys: {{ orders-copy: \"{addr}/keys/kapsule-orders\" }}\nderive_key_url: \"{addr}/keys/kapsule-derive/0123abcd\"\ntimeout_ms: 2000\nretries: 2\ncredential: {credential}\n"
    ))
    .unwrap()
}

fn client_secret(addr: &str) -> String {
    format!("{{ type: client_secret, tenant_id: t-1, client_id: c-1, client_secret_env: KAPSULE_TEST_AZURE_SECRET, authority_host: \"{addr}\" }}")
}

#[tokio::test]
async fn wrapped_keys_round_trip_across_a_rotation_with_one_cached_token() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current.clone(), |_, _| None)).await;
    let kms = AzureKms::new(&config(&addr, &client_secret(&addr))).unwrap();
    let old = kms.generate_data_key("orders").await.unwrap();
    assert!(
        old.edek.starts_with(b"azure:0a1b2c3d:"),
        "{:?}",
        String::from_utf8_lossy(&old.edek)
    );
    *current.lock() = "ffee9988".to_owned();
    let new = kms.generate_data_key("orders").await.unwrap();
    assert!(new.edek.starts_with(b"azure:ffee9988:"));
    // A fresh client (empty caches) unwraps both, each with the version recorded at wrap time.
    let fresh = AzureKms::new(&config(&addr, &client_secret(&addr))).unwrap();
    assert_eq!(
        *fresh.decrypt_data_key("orders", &old.edek).await.unwrap(),
        *old.plaintext
    );
    assert_eq!(
        *fresh.decrypt_data_key("orders", &new.edek).await.unwrap(),
        *new.plaintext
    );
    fresh.key_info("orders").await.unwrap();

    let seen = seen.lock().clone();
    let tokens: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target().contains("/oauth2/"))
        .collect();
    assert_eq!(tokens.len(), 2, "one token per client: {seen:#?}");
    assert_eq!(tokens[0].target(), "/t-1/oauth2/v2.0/token");
    for field in [
        "grant_type=client_credentials",
        "client_id=c-1",
        "scope=https%3A%2F%2Fvault.azure.net%2F.default",
        "client_secret=azure-test-secret",
    ] {
        assert!(
            tokens[0].body.contains(field),
            "{field} in {}",
            tokens[0].body
        );
    }
    let calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target().starts_with("/keys/"))
        .collect();
    assert_eq!(
        calls[0].target(),
        "/keys/kapsule-orders/wrapkey?api-version=7.4"
    );
    assert_eq!(calls[0].json()["alg"], "RSA-OAEP-256");
    assert_eq!(calls[0].header("authorization"), "Bearer tok-0");
    assert_eq!(
        calls[2].target(),
        "/keys/kapsule-orders/0a1b2c3d/unwrapkey?api-version=7.4"
    );
    assert_eq!(
        calls[3].target(),
        "/keys/kapsule-orders/ffee9988/unwrapkey?api-version=7.4"
    );
    assert!(!format!("{kms:?}").contains("azure-test-secret"));
}

#[tokio::test]
async fn an_edek_only_unwraps_for_its_key_id_and_bad_ids_make_no_call() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, |_, _| None)).await;
    let kms = AzureKms::new(&config(&addr, &client_secret(&addr))).unwrap();
    let dk = kms.generate_data_key("orders").await.unwrap();
    // orders-copy maps to the same Key Vault key: the key id binding refuses it.
    let e = kms
        .decrypt_data_key("orders-copy", &dk.edek)
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e:?}");
    let calls = seen.lock().len();
    for bad in ["orders.v1", "a_b"] {
        let e = kms.generate_data_key(bad).await.unwrap_err();
        assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{bad}");
    }
    let e = kms
        .decrypt_data_key("orders", b"azure:../../secrets/x:AAAA")
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
    assert_eq!(
        seen.lock().len(),
        calls,
        "refused ids and EDEKs reached the server"
    );
}

#[tokio::test]
async fn a_401_fetches_a_new_token_throttling_is_retried_and_403_is_final() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, |n, req| match n {
        // Request 0 is the first token; 1 the first wrap: refused as if the token was revoked.
        1 => Some((
            401,
            json!({"error": {"code": "Unauthorized", "message": "token expired"}}).to_string(),
        )),
        3 => Some((
            429,
            json!({"error": {"code": "Throttled", "message": "slow down"}}).to_string(),
        )),
        _ if req.target().contains("kapsule-forbidden") => Some((
            403,
            json!({"error": {"code": "Forbidden", "message": "no wrapKey permission"}}).to_string(),
        )),
        _ => None,
    }))
    .await;
    let kms = AzureKms::new(&config(&addr, &client_secret(&addr))).unwrap();
    kms.generate_data_key("orders").await.unwrap();
    let seen_now = seen.lock().clone();
    let targets: Vec<&str> = seen_now.iter().map(|s| s.target()).collect();
    assert_eq!(
        targets.len(),
        5,
        "token, 401, new token, 429, wrap: {targets:?}"
    );
    assert_eq!(seen_now[4].header("authorization"), "Bearer tok-1");
    let before = seen.lock().len();
    let e = kms.generate_data_key("forbidden").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::PermissionDenied, "{e:?}");
    assert!(
        e.message.contains("Crypto Service Encryption User"),
        "{e:?}"
    );
    assert_eq!(seen.lock().len(), before + 1, "403 was retried");
}

#[tokio::test]
async fn workload_and_managed_identity_tokens_are_requested_as_entra_and_imds_expect() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, |_, _| None)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "federated-jwt\n").unwrap();
    let wi = format!(
        "{{ type: workload_identity, tenant_id: t-2, client_id: c-2, token_file: \"{}\", authority_host: \"{addr}\" }}",
        token_file.display()
    );
    AzureKms::new(&config(&addr, &wi))
        .unwrap()
        .generate_data_key("orders")
        .await
        .unwrap();
    let mi = format!("{{ type: managed_identity, client_id: c-3, endpoint: \"{addr}/metadata/identity/oauth2/token\" }}");
    AzureKms::new(&config(&addr, &mi))
        .unwrap()
        .generate_data_key("orders")
        .await
        .unwrap();
    let seen = seen.lock().clone();
    let wi_req = &seen[0];
    assert_eq!(wi_req.target(), "/t-2/oauth2/v2.0/token");
    assert!(
        wi_req.body.contains("client_assertion=federated-jwt"),
        "{}",
        wi_req.body
    );
    assert!(wi_req.body.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));
    let mi_req = &seen[2];
    assert!(mi_req.line.starts_with("GET "), "{}", mi_req.line);
    assert_eq!(mi_req.header("metadata"), "true");
    assert!(
        mi_req
            .target()
            .contains("resource=https%3A%2F%2Fvault.azure.net"),
        "{}",
        mi_req.target()
    );
    assert!(mi_req.target().contains("client_id=c-3"));
}

#[tokio::test]
async fn derived_keys_are_deterministic_signatures_of_the_pinned_key() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, |_, _| None)).await;
    let kms = AzureKms::new(&config(&addr, &client_secret(&addr))).unwrap();
    let a = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    let b = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(1)))
        .await
        .unwrap();
    let c = kms
        .derive_key(DeriveRequest::new("orders", b"other", None))
        .await
        .unwrap();
    assert_eq!(*a.material, *b.material);
    assert_ne!(*a.material, *c.material);
    let seen = seen.lock().clone();
    assert_eq!(
        seen[1].target(),
        "/keys/kapsule-derive/0123abcd/sign?api-version=7.4"
    );
    assert_eq!(seen[1].json()["alg"], "RS256");
}

#[test]
fn validation_reports_every_problem_and_credentials_are_checked_at_start_up() {
    let mut c = config("https://kv.vault.azure.net", "{ type: managed_identity }");
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(c.token_scope(), "https://vault.azure.net/.default");
    c.scope = None;
    c.vault_url = "https://hsm.managedhsm.azure.net".into();
    assert_eq!(c.token_scope(), "https://managedhsm.azure.net/.default");
    c.vault_url = "http://kv.example/path".into();
    c.key_template = "kapsule_{key_id}".into();
    c.keys.insert("x".into(), "https://elsewhere/keys/x".into());
    c.derive_key_url = Some("http://kv.example/path/keys/d".into());
    c.timeout_ms = 0;
    c.retries = 20;
    c.credential.tenant_id = Some("t".into());
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    // 8: the keys entry of config() no longer matches the changed vault_url either.
    assert_eq!(p.len(), 8, "{p:#?}");
    let cs: AzureCredentialConfig =
        serde_norway::from_str("type: client_secret\ntenant_id: t\nclient_id: c\nclient_secret_env: KAPSULE_TEST_AZURE_UNSET\n")
            .unwrap();
    let e = cs.source("s").err().unwrap();
    assert!(
        format!("{e:#}").contains("KAPSULE_TEST_AZURE_UNSET"),
        "{e:#}"
    );
    assert!(
        serde_norway::from_str::<AzureCredentialConfig>("type: client_secret\nsecret: x\n")
            .is_err()
    );
}

/// SHA-256 of the DER of the certificate in `test-client-certificate.pem` (`openssl x509
/// -outform der | sha256sum`), computed outside Kapsule.
const TEST_CERT_SHA256: &str = "caac95c8de167239e8c01214ec751119f71de4cdfed11606088fa412bc0c6d92";

#[tokio::test]
async fn a_client_certificate_signs_an_rs256_assertion_entra_id_can_match_and_verify() {
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, |_, _| None)).await;
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("client.pem");
    let pem = include_str!("test-client-certificate.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let cc = format!(
        "{{ type: client_certificate, tenant_id: t-4, client_id: c-4, client_certificate_file: \"{}\", authority_host: \"{addr}\" }}",
        pem_path.display()
    );
    let kms = AzureKms::new(&config(&addr, &cc)).unwrap();
    kms.generate_data_key("orders").await.unwrap();
    let seen = seen.lock().clone();
    let token = &seen[0];
    assert_eq!(token.target(), "/t-4/oauth2/v2.0/token");
    assert!(token.body.contains("grant_type=client_credentials"));
    assert!(token.body.contains("client_id=c-4"));
    assert!(token.body.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));
    assert!(!token.body.contains("PRIVATE"), "key material sent");
    let jwt = token
        .body
        .split('&')
        .find_map(|f| f.strip_prefix("client_assertion="))
        .unwrap();
    // The signature verifies with the certificate's key.
    let (header, claims) = crate::kms::jwt::verified_rs256(jwt, pem);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        header["x5t#S256"],
        B64URL.encode(hex::decode(TEST_CERT_SHA256).unwrap())
    );
    assert_eq!(claims["aud"], format!("{addr}/t-4/oauth2/v2.0/token"));
    assert_eq!(claims["iss"], "c-4");
    assert_eq!(claims["sub"], "c-4");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap(),
        600
    );
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
    assert_eq!(seen[1].header("authorization"), "Bearer tok-0");
}

#[test]
fn a_client_certificate_file_without_its_own_key_fails_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pem = include_str!("test-client-certificate.pem");
    let cert_only = &pem[..pem.find("-----BEGIN PRIVATE KEY-----").unwrap()];
    let other_key = include_str!("../gcp/test-service-account.pem");
    for (name, contents, expected) in [
        ("cert-only.pem", cert_only.to_owned(), "no PEM PRIVATE KEY"),
        ("key-only.pem", other_key.to_owned(), "no PEM CERTIFICATE"),
        (
            "mismatched.pem",
            format!("{cert_only}{other_key}"),
            "does not belong",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let cred: AzureCredentialConfig = serde_norway::from_str(&format!(
            "type: client_certificate\ntenant_id: t\nclient_id: c\nclient_certificate_file: \"{}\"\n",
            path.display()
        ))
        .unwrap();
        let mut problems = Vec::new();
        cred.validate("kms.credential", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let e = cred.source("s").err().unwrap();
        assert!(format!("{e:#}").contains(expected), "{name}: {e:#}");
    }
    let no_ids: AzureCredentialConfig = serde_norway::from_str(
        "type: client_certificate\nclient_certificate_file: /x\nclient_secret_env: X\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    no_ids.validate("kms.credential", &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// `kapsule keys list` with Azure: the vault's keys whose name `key_template` makes, across
/// `nextLink` pages, with enabled/disabled and their current version; keys of a type RSA-OAEP-256
/// cannot wrap with (EC) and keys outside the template left out; the `keys` map always listed (a
/// missing key as `unknown_key`). A next page outside the vault is refused, not followed.
#[tokio::test]
async fn listing_follows_pages_within_the_vault_and_shows_state_and_version() {
    use std::sync::atomic::AtomicBool;
    let foreign_next_page = Arc::new(AtomicBool::new(false));
    let foreign = foreign_next_page.clone();
    let current = Arc::new(parking_lot::Mutex::new("0a1b2c3d".to_owned()));
    let (addr, seen) = scripted_server(key_vault(current, move |_, req| {
        let host = req.header("host").to_owned();
        let listed = |name: &str| json!({"kid": format!("http://{host}/keys/{name}"), "attributes": {"enabled": true}});
        let key = |name: &str, version: &str, kty: &str, enabled: bool| {
            let key = json!({"key": {"kid": format!("http://{host}/keys/{name}/{version}"), "kty": kty}, "attributes": {"enabled": enabled}});
            Some((200, key.to_string()))
        };
        match req.target() {
            "/keys?api-version=7.4" => {
                let next = if foreign.load(Ordering::Relaxed) {
                    "https://elsewhere.example/keys?api-version=7.4&$skiptoken=2".to_owned()
                } else {
                    format!("http://{host}/keys?api-version=7.4&$skiptoken=2")
                };
                let page = [listed("kapsule-orders"), listed("other-key")];
                Some((200, json!({"value": page, "nextLink": next}).to_string()))
            }
            "/keys?api-version=7.4&$skiptoken=2" => {
                let page = [listed("kapsule-off"), listed("kapsule-ec")];
                Some((200, json!({"value": page, "nextLink": null}).to_string()))
            }
            "/keys/kapsule-off?api-version=7.4" => key("kapsule-off", "77aa", "RSA-HSM", false),
            "/keys/kapsule-ec?api-version=7.4" => key("kapsule-ec", "88bb", "EC", true),
            "/keys/kapsule-never-created?api-version=7.4" => Some((
                404,
                json!({"error": {"code": "KeyNotFound", "message": "no such key"}}).to_string(),
            )),
            _ => None,
        }
    }))
    .await;
    let mut c = config(&addr, &client_secret(&addr));
    c.keys
        .insert("gone".into(), format!("{addr}/keys/kapsule-never-created"));
    let kms = AzureKms::new(&c).unwrap();
    let lines: Vec<String> = kms
        .list_keys()
        .await
        .unwrap()
        .iter()
        .map(|k| k.line())
        .collect();
    assert_eq!(
        lines,
        [
            format!("gone\tv1\t{addr}/keys/kapsule-never-created\tunknown_key"),
            format!("off\tv1\t{addr}/keys/kapsule-off\tdisabled (version 77aa)"),
            format!("orders\tv1\t{addr}/keys/kapsule-orders\tenabled (version v1)"),
            format!("orders-copy\tv1\t{addr}/keys/kapsule-orders\tenabled (version v1)"),
        ]
    );

    foreign_next_page.store(true, Ordering::Relaxed);
    let before = seen.lock().len();
    let err = kms.list_keys().await.unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Other, "{err:?}");
    assert!(err.message.contains("not followed"), "{}", err.message);
    // Only the first page was asked for, from the vault itself.
    let after: Vec<String> = seen.lock()[before..]
        .iter()
        .map(|s| s.target().to_owned())
        .collect();
    assert_eq!(after, ["/keys?api-version=7.4"]);
}
