//! Unit tests of the AWS KMS client against a scripted HTTP server that answers like AWS KMS
//! (JSON 1.1 protocol): error classification, throttling retries under the request deadline,
//! the encryption context and signing on the wire. The round trip against a real KMS API
//! implementation is in tests/integration/kms_aws.rs.

use std::time::Duration;

use base64::Engine;
use tokio::time::Instant;

use super::*;
use crate::kms::test_server::scripted_server;

/// What the AWS-like server answers to request `n` for operation `op`.
type AwsScript = Box<dyn Fn(usize, &str) -> (u16, String) + Send + Sync>;

/// A server answering like AWS KMS: request `n` for operation `op` gets `script(n, op)`.
async fn scripted_kms(
    script: AwsScript,
) -> (
    String,
    std::sync::Arc<parking_lot::Mutex<Vec<crate::kms::test_server::Seen>>>,
) {
    scripted_server(Box::new(move |n, seen| script(n, seen.operation()))).await
}

fn error(code: &str) -> (u16, String) {
    (
        400,
        format!(r#"{{"__type":"{code}","message":"scripted {code}"}}"#),
    )
}

fn data_key_answer() -> (u16, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    (
        200,
        serde_json::json!({
            "KeyId": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "Plaintext": b64.encode([7u8; 32]),
            "CiphertextBlob": b64.encode(b"opaque-edek"),
        })
        .to_string(),
    )
}

/// A client of `endpoint` with static test credentials from the environment.
fn kms(endpoint: &str, retries: u32, timeout_ms: u64) -> AwsKms {
    // The same values in every test: the environment provider reads them at each call.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDKAPSULETEST");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "kapsule-test-secret");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let mut c: AwsKmsConfig = serde_norway::from_str(
        "region: eu-west-1\nkey_template: \"alias/kapsule-{key_id}\"\nmac_key_template: \"alias/kapsule-{key_id}-mac\"\n",
    )
    .unwrap();
    c.endpoint = Some(endpoint.to_owned());
    c.retries = retries;
    c.timeout_ms = timeout_ms;
    AwsKms::new(&c).unwrap()
}

#[tokio::test]
async fn requests_are_signed_and_bind_the_key_id_as_encryption_context() {
    let (addr, seen) = scripted_kms(Box::new(|_, _| data_key_answer())).await;
    let kms = kms(&addr, 0, 2_000);
    let dk = kms.generate_data_key("orders").await.unwrap();
    assert_eq!(*dk.plaintext, [7u8; 32]);
    assert_eq!(dk.edek, b"opaque-edek");
    let seen = seen.lock().clone();
    assert_eq!(seen[0].operation(), "GenerateDataKey");
    assert!(
        seen[0]
            .header("authorization")
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDKAPSULETEST/")
            && seen[0]
                .header("authorization")
                .contains("/eu-west-1/kms/aws4_request"),
        "{:?}",
        seen[0].header("authorization")
    );
    assert!(!seen[0]
        .header("authorization")
        .contains("kapsule-test-secret"));
    assert_eq!(seen[0].json()["KeyId"], "alias/kapsule-orders");
    assert_eq!(seen[0].json()["KeySpec"], "AES_256");
    assert_eq!(
        seen[0].json()["EncryptionContext"][ENCRYPTION_CONTEXT_KEY],
        "orders"
    );
    // The key id is checked before any request: this one cannot be an alias name.
    let e = kms.generate_data_key("orders.v1").await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{e:?}");
    assert!(!e.to_string().contains("alias"), "client text: {e}");
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_until_it_passes() {
    let (addr, seen) = scripted_kms(Box::new(|n, _| {
        if n < 2 {
            error("ThrottlingException")
        } else {
            data_key_answer()
        }
    }))
    .await;
    let kms = kms(&addr, 3, 2_000);
    kms.generate_data_key("orders").await.unwrap();
    assert_eq!(seen.lock().len(), 3);
}

#[tokio::test]
async fn throttling_retries_stop_at_the_request_deadline() {
    let (addr, seen) = scripted_kms(Box::new(|_, _| error("ThrottlingException"))).await;
    let kms = kms(&addr, 10, 2_000);
    let start = Instant::now();
    let err = crate::kms::deadline::scope(
        Some(start + Duration::from_millis(600)),
        kms.generate_data_key("orders"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, KmsErrorKind::Transient, "{err:?}");
    assert!(err.is_retriable());
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let calls = seen.lock().len();
    assert!(
        (2..=6).contains(&calls),
        "{calls} calls: expected a few backoff retries, bounded by 600 ms"
    );
    assert!(err.message.contains("no time left"), "{err:?}");
}

#[tokio::test]
async fn error_codes_map_to_kms_error_kinds_and_only_transient_ones_are_retried() {
    for (code, kind, calls) in [
        ("DisabledException", KmsErrorKind::Transient, 1),
        ("KMSInvalidStateException", KmsErrorKind::Transient, 1),
        ("NotFoundException", KmsErrorKind::UnknownKey, 1),
        ("AccessDeniedException", KmsErrorKind::PermissionDenied, 1),
        (
            "InvalidCiphertextException",
            KmsErrorKind::InvalidCiphertext,
            1,
        ),
        ("IncorrectKeyException", KmsErrorKind::InvalidCiphertext, 1),
        ("KMSInternalException", KmsErrorKind::Transient, 3),
        ("ValidationException", KmsErrorKind::Other, 1),
    ] {
        let (addr, seen) = scripted_kms(Box::new(move |_, _| error(code))).await;
        let kms = kms(&addr, 2, 2_000);
        let e = kms.decrypt_data_key("orders", b"edek").await.unwrap_err();
        assert_eq!(e.kind, kind, "{code}: {e:?}");
        assert_eq!(seen.lock().len(), calls, "{code}");
        assert!(e.message.contains(code), "{code}: {e:?}");
        assert!(
            !e.to_string().contains(code),
            "client text names the AWS error: {e}"
        );
    }
    // A server error without a code, and no server at all: transient.
    let (addr, _) = scripted_kms(Box::new(|_, _| (503, "{}".into()))).await;
    let e = kms(&addr, 0, 2_000)
        .decrypt_data_key("orders", b"edek")
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Transient, "{e:?}");
    let e = kms("http://127.0.0.1:1", 1, 500)
        .decrypt_data_key("orders", b"edek")
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::Transient, "{e:?}");
    assert!(e.message.contains("after 2 attempts"), "{e:?}");
}

#[tokio::test]
async fn derive_key_uses_the_hmac_key_and_has_one_version() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (addr, seen) = scripted_kms(Box::new(move |_, _| {
        (
            200,
            serde_json::json!({"Mac": base64::engine::general_purpose::STANDARD.encode([9u8; 32]), "MacAlgorithm": "HMAC_SHA_256", "KeyId": "x"})
                .to_string(),
        )
    }))
    .await;
    let kms = kms(&addr, 0, 2_000);
    let d = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", None))
        .await
        .unwrap();
    assert_eq!(*d.material, [9u8; 32]);
    assert_eq!(d.kek_version, 1);
    let seen = seen.lock().clone();
    assert_eq!(seen[0].operation(), "GenerateMac");
    assert_eq!(seen[0].json()["KeyId"], "alias/kapsule-orders-mac");
    assert_eq!(seen[0].json()["Message"], b64.encode(b"ctx"));
    let e = kms
        .derive_key(DeriveRequest::new("orders", b"ctx", Some(2)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::InvalidCiphertext);
}

#[test]
fn a_missing_profile_is_a_start_up_error() {
    let mut c: AwsKmsConfig = serde_norway::from_str("region: eu-west-1\n").unwrap();
    c.profile = Some("kapsule-no-such-profile".into());
    let e = AwsKms::new(&c).unwrap_err();
    assert!(e.to_string().contains("kapsule-no-such-profile"), "{e:#}");
    c.profile = None;
    c.ca_cert = Some("/nonexistent/ca.pem".into());
    let e = AwsKms::new(&c).unwrap_err();
    assert!(format!("{e:#}").contains("kms.ca_cert"), "{e:#}");
}
