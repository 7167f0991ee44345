//! Unit tests of the Cloud KMS client against a scripted server answering with the JSON shapes of
//! the Cloud KMS and OAuth2 REST references (`name` + `ciphertext`, `plaintext`, `mac`,
//! `access_token` + `expires_in`, `{"error": {"code", "message", "status"}}`). Its "encryption"
//! records the key version and the AAD and checks both on decrypt, as Cloud KMS does. The client
//! is also run against drongo's Cloud KMS API in tests/integration/kms_gcp.rs (no token exchange,
//! rotation or `macSign` there: those are covered here only; see docs/kms.md).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::credential::testing::service_account_file;
use super::*;
use crate::kms::test_server::{scripted_server, Seen};

const KEY: &str = "projects/p/locations/europe-west1/keyRings/kapsule/cryptoKeys/kapsule-orders";

fn error(code: u16, status: &str, message: &str) -> (u16, String) {
    (
        code,
        json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
    )
}

/// Cloud KMS + OAuth2 in one. `primary` is the primary version; `disabled` a disabled version.
fn cloud_kms(primary: Arc<AtomicU32>, disabled: Arc<AtomicU32>) -> crate::kms::test_server::Script {
    let tokens = AtomicU32::new(0);
    Box::new(move |_, req: &Seen| {
        let target = req.target().to_owned();
        if target == "/token" || target == "/sts/v1/token" || target.contains("generateAccessToken")
        {
            let t = tokens.fetch_add(1, Ordering::Relaxed);
            if target.contains("generateAccessToken") {
                return (200, json!({"accessToken": format!("impersonated-{t}"), "expireTime": "2030-01-01T00:00:00Z"}).to_string());
            }
            return (200, json!({"access_token": format!("tok-{t}"), "expires_in": 3599, "token_type": "Bearer"}).to_string());
        }
        let body = req.json();
        let Some((resource, method)) = target
            .strip_prefix("/v1/")
            .map(|r| r.split_once(':').unwrap_or((r, "")))
        else {
            return error(404, "NOT_FOUND", "no such path");
        };
        if !resource.starts_with(KEY) {
            return error(404, "NOT_FOUND", &format!("{resource} not found."));
        }
        let decode = |f: &str| {
            B64.decode(body[f].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        match method {
            "encrypt" => {
                let v = primary.load(Ordering::Relaxed);
                if v == disabled.load(Ordering::Relaxed) {
                    return error(400, "FAILED_PRECONDITION", &format!("{KEY}/cryptoKeyVersions/{v} is not enabled, current state is: DISABLED."));
                }
                let blob = json!({"v": v, "aad": body["additionalAuthenticatedData"], "pt": B64.encode(decode("plaintext"))}).to_string();
                (200, json!({"name": format!("{KEY}/cryptoKeyVersions/{v}"), "ciphertext": B64.encode(blob)}).to_string())
            }
            "decrypt" => {
                let blob: Value = serde_json::from_slice(&decode("ciphertext")).unwrap_or_default();
                if blob["aad"] != body["additionalAuthenticatedData"] || blob["pt"].is_null() {
                    return error(400, "INVALID_ARGUMENT", "Decryption failed: verify that 'name' refers to the correct CryptoKey.");
                }
                (200, json!({"plaintext": blob["pt"], "usedPrimary": false}).to_string())
            }
            "macSign" => {
                let mac = Sha256::digest([resource.as_bytes(), &decode("data")].concat());
                (200, json!({"name": resource, "mac": B64.encode(mac)}).to_string())
            }
            "" => (200, json!({"name": KEY, "purpose": "ENCRYPT_DECRYPT", "primary": {"name": format!("{KEY}/cryptoKeyVersions/{}", primary.load(Ordering::Relaxed)), "state": "ENABLED"}}).to_string()),
            _ => error(400, "INVALID_ARGUMENT", "unknown method"),
        }
    })
}

fn config(addr: &str, credential: &str) -> GcpKmsConfig {
    serde_norway::from_str(&format!(
        "key_template: \"projects/p/locations/europe-west1/keyRings/kapsule/cryptoKeys/kapsule-{{key_id}}\"\nkeys: {{ orders-copy: \"{KEY}\" }}\nmac_key_template: \"projects/p/locations/europe-west1/keyRings/kapsule/cryptoKeys/kapsule-{{key_id}}-mac/cryptoKeyVersions/1\"\nendpoint: \"{addr}\"\ntimeout_ms: 2000\nretries: 2\ncredential: {credential}\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn service_account_jwt_is_signed_and_data_keys_round_trip_across_a_rotation() {
    let (primary, disabled) = (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(0)));
    let (addr, seen) = scripted_server(cloud_kms(primary.clone(), disabled)).await;
    let dir = tempfile::tempdir().unwrap();
    let sa = service_account_file(dir.path(), &format!("{addr}/token"));
    let cred = format!(
        "{{ type: service_account_key, file: \"{}\" }}",
        sa.display()
    );
    let kms = GcpKms::new(&config(&addr, &cred)).unwrap();
    let old = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(old.kek_version, 1);
    primary.store(2, Ordering::Relaxed);
    let new = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(new.kek_version, 2);
    assert_eq!(kms.key_info("orders").await.unwrap().latest_version, 2);
    let fresh = GcpKms::new(&config(&addr, &cred)).unwrap();
    assert_eq!(
        *fresh.decrypt_data_key("orders", &old.edek).await.unwrap(),
        *old.plaintext
    );
    assert_eq!(
        *fresh.decrypt_data_key("orders", &new.edek).await.unwrap(),
        *new.plaintext
    );
    // The AAD binds the key id: the same CryptoKey under another key id refuses it.
    let e = fresh
        .decrypt_data_key("orders-copy", &old.edek)
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext, "{e:?}");

    let seen = seen.lock().clone();
    let token = &seen[0];
    assert_eq!(token.target(), "/token");
    assert!(token
        .body
        .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"));
    let jwt = token.body.split("assertion=").nth(1).unwrap();
    // The signature verifies with the service account's public key.
    let (_, claims) =
        crate::kms::jwt::verified_rs256(jwt, include_str!("test-service-account.pem"));
    assert_eq!(claims["iss"], "kapsule@p.iam.gserviceaccount.com");
    assert_eq!(claims["scope"], CLOUD_KMS_SCOPE);
    assert_eq!(claims["aud"], format!("{addr}/token"));
    let encrypt = &seen[1];
    assert_eq!(encrypt.target(), format!("/v1/{KEY}:encrypt"));
    assert_eq!(encrypt.header("authorization"), "Bearer tok-0");
    assert_eq!(
        encrypt.json()["additionalAuthenticatedData"],
        B64.encode("kapsule-kek:orders")
    );
}

#[tokio::test]
async fn disabled_versions_fail_retriably_unknown_keys_and_bad_ids_do_not_retry() {
    let (primary, disabled) = (Arc::new(AtomicU32::new(3)), Arc::new(AtomicU32::new(3)));
    let (addr, seen) = scripted_server(cloud_kms(primary, disabled)).await;
    let dir = tempfile::tempdir().unwrap();
    let sa = service_account_file(dir.path(), &format!("{addr}/token"));
    let kms = GcpKms::new(&config(
        &addr,
        &format!(
            "{{ type: service_account_key, file: \"{}\" }}",
            sa.display()
        ),
    ))
    .unwrap();
    let e = kms.generate_data_key("orders").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Transient, "{e:?}");
    assert!(
        e.is_retriable() && e.message.contains("after 1 attempts"),
        "{e:?}"
    );
    let e = kms.generate_data_key("payments").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e:?}");
    let before = seen.lock().len();
    assert_eq!(
        kms.generate_data_key("a.b").await.unwrap_err().kind,
        KmsErrorKind::UnknownKey
    );
    assert_eq!(seen.lock().len(), before);
    let d1 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    let d2 = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(1)))
        .await
        .unwrap();
    assert_eq!(*d1.material, *d2.material);
    assert_eq!(
        kms.derive_key(DeriveRequest::new("orders", b"ctx", Some(2)))
            .await
            .unwrap_err()
            .kind,
        KmsErrorKind::InvalidCiphertext
    );
}

#[tokio::test]
async fn workload_identity_federation_and_the_metadata_server_get_tokens() {
    let (primary, disabled) = (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(0)));
    let (addr, seen) = scripted_server(cloud_kms(primary, disabled)).await;
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("ksa-token");
    std::fs::write(&subject, "k8s-jwt").unwrap();
    let file = dir.path().join("wif.json");
    std::fs::write(&file, json!({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{addr}/sts/v1/token"),
        "credential_source": {"file": subject},
        "service_account_impersonation_url": format!("{addr}/v1/projects/-/serviceAccounts/kapsule@p.iam.gserviceaccount.com:generateAccessToken"),
    }).to_string()).unwrap();
    let kms = GcpKms::new(&config(
        &addr,
        &format!("{{ type: external_account, file: \"{}\" }}", file.display()),
    ))
    .unwrap();
    kms.generate_data_key("orders").await.unwrap();
    let md = GcpKms::new(&config(
        &addr,
        &format!("{{ type: metadata_server, endpoint: \"{addr}\" }}"),
    ))
    .unwrap();
    // The metadata path is not served by the script: no token is a refusal, not a retry loop.
    let e = md.generate_data_key("orders").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::PermissionDenied, "{e:?}");
    let seen = seen.lock().clone();
    assert!(
        seen[0].body.contains("subject_token=k8s-jwt"),
        "{}",
        seen[0].body
    );
    assert!(seen[0]
        .body
        .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"));
    assert_eq!(seen[1].header("authorization"), "Bearer tok-0");
    assert_eq!(seen[2].header("authorization"), "Bearer impersonated-1");
    let metadata = &seen[3];
    assert_eq!(metadata.header("metadata-flavor"), "Google");
    assert!(metadata
        .target()
        .starts_with("/computeMetadata/v1/instance/service-accounts/default/token"));
}

#[test]
fn validation_reports_every_problem_and_bad_credential_files_fail_at_start_up() {
    let mut c = config(
        "https://cloudkms.googleapis.com",
        "{ type: metadata_server }",
    );
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert!(p.is_empty(), "{p:?}");
    c.key_template = "projects/p/cryptoKeys/{key_id}".into();
    c.mac_key_template = Some("projects/p/locations/l/keyRings/r/cryptoKeys/{key_id}".into());
    c.keys.insert("x".into(), "nope".into());
    c.endpoint = "http://kms.example".into();
    c.credential.file = Some("/x".into());
    c.timeout_ms = 1;
    c.retries = 11;
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert_eq!(p.len(), 7, "{p:#?}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(&f, r#"{"type": "authorized_user"}"#).unwrap();
    let cred: GcpCredentialConfig = serde_norway::from_str(&format!(
        "type: service_account_key\nfile: \"{}\"\n",
        f.display()
    ))
    .unwrap();
    let e = cred.source().err().unwrap();
    assert!(
        format!("{e:#}").contains("expected service_account"),
        "{e:#}"
    );
}

#[tokio::test]
async fn an_access_token_file_is_sent_as_is_and_must_exist_at_start_up() {
    let (primary, disabled) = (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(0)));
    let (addr, seen) = scripted_server(cloud_kms(primary, disabled)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "ya29.sidecar-token\n").unwrap();
    let cred = format!(
        "{{ type: access_token_file, file: \"{}\" }}",
        file.display()
    );
    let kms = GcpKms::new(&config(&addr, &cred)).unwrap();
    kms.generate_data_key("orders").await.unwrap();
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1, "no token exchange: {seen:?}");
    assert_eq!(seen[0].header("authorization"), "Bearer ya29.sidecar-token");

    let mut c = config(&addr, "{ type: access_token_file }");
    let mut p = Vec::new();
    c.validate("kms", &mut p);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("kms.credential.file"), "{p:?}");
    c.credential.file = Some(dir.path().join("missing"));
    let e = GcpKms::new(&c).unwrap_err();
    assert!(format!("{e:#}").contains("missing"), "{e:#}");
}

/// `kapsule keys list` with Cloud KMS: it follows `nextPageToken`, lists the key ring's keys whose
/// name `key_template` makes with their primary version and its state, leaves out keys of another
/// purpose (the `-mac` HMAC keys) and keys outside the template, and always lists the `keys` map
/// (a missing key as `unknown_key`), looking up with a `GET` only what the listing did not show.
#[tokio::test]
async fn listing_follows_pages_and_leaves_out_keys_of_another_purpose() {
    const RING: &str = "projects/p/locations/europe-west1/keyRings/kapsule";
    let key = |name: &str, purpose: &str, version: u32, state: &str| {
        let mut k = json!({"name": format!("{RING}/cryptoKeys/{name}"), "purpose": purpose});
        if purpose == "ENCRYPT_DECRYPT" {
            k["primary"] = json!({"name": format!("{RING}/cryptoKeys/{name}/cryptoKeyVersions/{version}"), "state": state});
        }
        k
    };
    let (addr, seen) = scripted_server(Box::new(move |_, req: &Seen| {
        let target = req.target();
        if target == format!("/v1/{RING}/cryptoKeys") {
            let page = [
                key("kapsule-orders", "ENCRYPT_DECRYPT", 3, "ENABLED"),
                key("kapsule-orders-mac", "MAC", 1, ""),
            ];
            (
                200,
                json!({"cryptoKeys": page, "nextPageToken": "page-2"}).to_string(),
            )
        } else if target == format!("/v1/{RING}/cryptoKeys?pageToken=page-2") {
            let page = [
                key("kapsule-off", "ENCRYPT_DECRYPT", 1, "DISABLED"),
                key("unrelated", "ENCRYPT_DECRYPT", 1, "ENABLED"),
            ];
            (200, json!({"cryptoKeys": page}).to_string())
        } else {
            error(404, "NOT_FOUND", "CryptoKey not found.")
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "gcp-test-token").unwrap();
    let mut c = config(
        &addr,
        &format!(
            "{{ type: access_token_file, file: \"{}\" }}",
            token.display()
        ),
    );
    c.keys
        .insert("gone".into(), format!("{RING}/cryptoKeys/never-created"));
    let listed = GcpKms::new(&c).unwrap().list_keys().await.unwrap();
    let lines: Vec<String> = listed.iter().map(|k| k.line()).collect();
    assert_eq!(
        lines,
        [
            format!("gone\tv1\t{RING}/cryptoKeys/never-created\tunknown_key"),
            format!("off\tv1\t{RING}/cryptoKeys/kapsule-off\tDISABLED"),
            format!("orders\tv3\t{RING}/cryptoKeys/kapsule-orders\tENABLED"),
            format!("orders-copy\tv3\t{KEY}\tENABLED"),
        ]
    );
    let targets: Vec<String> = seen.lock().iter().map(|s| s.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            format!("/v1/{RING}/cryptoKeys"),
            format!("/v1/{RING}/cryptoKeys?pageToken=page-2"),
            format!("/v1/{RING}/cryptoKeys/never-created"),
        ]
    );
    assert!(seen
        .lock()
        .iter()
        .all(|s| s.header("authorization") == "Bearer gcp-test-token"));
}
