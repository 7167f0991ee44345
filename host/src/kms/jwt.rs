//! RS256-signed JWTs that prove a client's identity to a token endpoint (RFC 7523): Google's
//! service-account assertion and Microsoft Entra ID's certificate client assertion. Keys are read
//! from PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) and signed with ring.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{KeyPair, RsaKeyPair};
use serde_json::Value;
use zeroize::Zeroizing;

use super::retry::Failure;
use super::KmsErrorKind;

/// The DER contents of every `-----BEGIN <label>-----` block of `pem`, in order, with its label.
/// `what` names the source in errors.
pub(crate) fn pem_blocks(
    pem: &str,
    what: &str,
) -> anyhow::Result<Vec<(String, Zeroizing<Vec<u8>>)>> {
    let mut blocks = Vec::new();
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let body: Zeroizing<String> =
            Zeroizing::new(lines.by_ref().take_while(|l| *l != end).collect::<String>());
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| anyhow::anyhow!("{what}: the {label} block is not base64"))?;
        blocks.push((label.to_owned(), Zeroizing::new(der)));
    }
    Ok(blocks)
}

/// The RSA private key of `pem` (the first `PRIVATE KEY` or `RSA PRIVATE KEY` block).
pub(crate) fn rsa_key_from_pem(pem: &str, what: &str) -> anyhow::Result<RsaKeyPair> {
    let blocks = pem_blocks(pem, what)?;
    let (label, der) = blocks
        .iter()
        .find(|(label, _)| label == "PRIVATE KEY" || label == "RSA PRIVATE KEY")
        .ok_or_else(|| anyhow::anyhow!("{what}: no PEM PRIVATE KEY block"))?;
    let key = if label == "PRIVATE KEY" {
        RsaKeyPair::from_pkcs8(der)
    } else {
        RsaKeyPair::from_der(der)
    };
    key.map_err(|e| anyhow::anyhow!("{what}: the {label} is no RSA key of 2048 bits or more ({e})"))
}

/// Whether the X.509 certificate `cert_der` carries `key`'s public key (its PKCS#1
/// `RSAPublicKey` is the subject public key of the certificate).
pub(crate) fn certificate_matches_key(cert_der: &[u8], key: &RsaKeyPair) -> bool {
    let public = key.public_key().as_ref();
    cert_der.windows(public.len()).any(|w| w == public)
}

/// `header.claims.signature`, base64url without padding, signed with RS256.
pub(crate) fn sign_rs256(
    key: &RsaKeyPair,
    header: &Value,
    claims: &Value,
) -> Result<String, Failure> {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| Failure {
        kind: KmsErrorKind::Other,
        message: "signing the client assertion JWT failed".into(),
        retry: false,
        status: None,
    })?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Test support: the header and claims of `jwt` once its RS256 signature verifies with the
/// public half of the PKCS#8 `PRIVATE KEY` block of `pem`, read here without
/// [`rsa_key_from_pem`] so that a bug there cannot hide one in signing.
#[cfg(test)]
pub(crate) fn verified_rs256(jwt: &str, pem: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {jwt}");
    let key_b64: String = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END").next())
        .expect("a PRIVATE KEY block")
        .split_whitespace()
        .collect();
    let pair = RsaKeyPair::from_pkcs8(&STANDARD.decode(key_b64).unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        pair.public_key().as_ref(),
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
    .expect("the JWT's RS256 signature verifies");
    let part = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[i]).unwrap()).unwrap()
    };
    (part(0), part(1))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
