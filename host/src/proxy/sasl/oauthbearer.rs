//! The OAUTHBEARER client-first message, parsed exactly as Apache Kafka parses it, and the
//! principal the broker will derive from it.
//!
//! Kafka's broker (`OAuthBearerSaslServer`) hands the message to
//! `OAuthBearerClientInitialResponse`, which matches the whole message against
//!
//! ```text
//! n,(a=SASLNAME)?,\x01((KEY=VALUE\x01)*)\x01
//! SASLNAME = ([\x01-\x7F] except = and ,  |  =2C  |  =3D)+
//! KEY      = [A-Za-z]+
//! VALUE    = [\x21-\x7E \t\r\n]+
//! ```
//!
//! then splits the key/value pairs into a map (a later key silently overwrites an earlier one),
//! takes `auth` from it and matches it against `(\w+) +([-_~+/.a-zA-Z0-9]+=*)` (RFC 6750's
//! b64token) with the scheme equal to `bearer` ignoring case. The authorization id is kept as sent (`=2C` is *not* unescaped) and
//! must equal the validated token's principal name.
//!
//! [`parse`] accepts exactly the messages Kafka accepts, except that it refuses a message that
//! repeats a key: Kafka would validate the last `auth=` while a reader that takes the first would
//! trust another token, so a repeated key is never relayed. Everything Kafka would refuse is
//! refused too, so Kapsule and the broker can never read two different tokens from one message.
//!
//! [`principal_name`] reads the principal from the token without verifying it (the broker does):
//! the configured claim (`proxy.oauthbearer_sub_claim_name`, default `sub`, as the broker's
//! `sasl.oauthbearer.sub.claim.name`) of a three-part JWS whose payload is a JSON object without
//! repeated member names. When the token is not such a JWT, the authorization id is the name:
//! the broker accepts the exchange only when it equals the token's principal.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::{malformed, SaslRefusal};

const M: &str = "OAUTHBEARER";

/// The parts of a client-first message Kapsule uses. Holds a bearer token: no `Debug`.
pub struct ClientFirst<'a> {
    /// The authorization id exactly as sent (escapes kept, as Kafka keeps them); `None` when empty.
    pub authzid: Option<&'a str>,
    /// The token of `auth=Bearer <token>`.
    pub token: &'a str,
}

/// Parses an OAUTHBEARER client-first message with Kafka's grammar (module docs); any message
/// Kafka would refuse, and any message that repeats a key, is [`SaslRefusal::Malformed`].
pub fn parse(message: &[u8]) -> Result<ClientFirst<'_>, SaslRefusal> {
    // Every class of Kafka's pattern is ASCII without NUL; Java decodes the bytes as UTF-8, so a
    // non-ASCII or invalid byte can never match.
    if !message.iter().all(|b| (0x01..=0x7f).contains(b)) {
        return Err(malformed(M, "a byte outside 0x01..=0x7F"));
    }
    // ASCII checked above.
    let text = std::str::from_utf8(message).map_err(|_| malformed(M, "not ASCII"))?;
    let rest = text
        .strip_prefix("n,")
        .ok_or_else(|| malformed(M, "does not start with the GS2 header `n,`"))?;
    let (authzid, rest) = match rest.strip_prefix(',') {
        Some(rest) => (None, rest),
        None => {
            let rest = rest
                .strip_prefix("a=")
                .ok_or_else(|| malformed(M, "GS2 header is neither `n,,` nor `n,a=<authzid>,`"))?;
            let end = rest
                .find(',')
                .ok_or_else(|| malformed(M, "GS2 header does not end with `,`"))?;
            let authzid = &rest[..end];
            if !is_saslname(authzid) {
                return Err(malformed(M, "authorization id is not a SASL name"));
            }
            (Some(authzid), &rest[end + 1..])
        }
    };
    let pairs = rest
        .strip_prefix('\u{1}')
        .ok_or_else(|| malformed(M, "no ^A after the GS2 header"))?;
    // `(KEY=VALUE ^A)* ^A` and nothing after: split on ^A gives the pairs, then two empty pieces.
    let mut pieces: Vec<&str> = pairs.split('\u{1}').collect();
    if pieces.len() < 2 || pieces.pop() != Some("") || pieces.pop() != Some("") {
        return Err(malformed(
            M,
            "does not end with exactly ^A^A after the key/value pairs",
        ));
    }
    let mut auth = None;
    let mut seen: Vec<&str> = Vec::with_capacity(pieces.len());
    for pair in pieces {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| malformed(M, "a key/value pair without `=`"))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(malformed(M, "a key that is not [A-Za-z]+"));
        }
        if value.is_empty() || !value.bytes().all(is_value_byte) {
            return Err(malformed(M, "a value outside [\\x21-\\x7E \\t\\r\\n]+"));
        }
        if seen.contains(&key) {
            // Kafka keeps the last, a lenient reader the first: never let them differ.
            return Err(malformed(M, "a key appears twice"));
        }
        seen.push(key);
        if key == "auth" {
            auth = Some(value);
        }
    }
    let auth = auth.ok_or_else(|| malformed(M, "no auth= key"))?;
    // `(\w+) +([-_~+/.a-zA-Z0-9]+=*)`, the whole value (Kafka 4.4's AUTH_PATTERN).
    let (scheme, token) = auth
        .split_once(' ')
        .ok_or_else(|| malformed(M, "auth= is not `Bearer <token>`"))?;
    let token = token.trim_start_matches(' ');
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let unpadded = token.trim_end_matches('=');
    let token_ok = !unpadded.is_empty()
        && unpadded.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'+' | b'/' | b'.')
        });
    if !scheme_ok || !token_ok {
        return Err(malformed(M, "auth= is not `Bearer <token>`"));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed(M, "auth= scheme is not Bearer"));
    }
    Ok(ClientFirst { authzid, token })
}

/// `([\x01-\x7F] except = and , | =2C | =3D)+`, case-sensitive as Kafka's pattern.
fn is_saslname(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b',' => return false,
            b'=' => {
                if !matches!(b.get(i + 1..i + 3), Some(b"2C") | Some(b"3D")) {
                    return false;
                }
                i += 3;
            }
            _ => i += 1,
        }
    }
    true
}

fn is_value_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | b' ' | b'\t' | b'\r' | b'\n')
}

/// The name the broker will authenticate a parsed message as, reading claim `claim` of the token
/// (see the module docs). Errors: the claim and the authorization id differ
/// ([`SaslRefusal::AuthzidMismatch`]), the token repeats a claim, the claim is blank, or neither
/// a readable claim nor an authorization id names anyone.
pub fn principal_name(first: &ClientFirst<'_>, claim: &str) -> Result<String, SaslRefusal> {
    let from_token = jwt_claim(first.token, claim)?;
    match (from_token, first.authzid) {
        (Some(name), Some(a)) if name != a => Err(SaslRefusal::AuthzidMismatch { mechanism: M }),
        (Some(name), _) => Ok(name),
        (None, Some(a)) => Ok(a.to_owned()),
        (None, None) => Err(malformed(
            M,
            "the token is not a JWT carrying the configured principal claim (proxy.oauthbearer_sub_claim_name) and there is no authorization id",
        )),
    }
}

/// Claim `claim` of a JWS compact serialization, decoded without verification. `Ok(None)` when
/// the token is not a three-part JWS with a JSON-object payload or the claim is absent or not a
/// string; an error when the payload repeats a member name (JSON parsers differ on which one
/// wins) or the claim is empty or only whitespace (Kafka refuses it).
fn jwt_claim(token: &str, claim: &str) -> Result<Option<String>, SaslRefusal> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Ok(None);
    };
    let claims = match serde_json::from_slice::<UniqueClaims>(&json) {
        Ok(c) => c.0,
        Err(e) if e.to_string().starts_with(REPEATED) => {
            return Err(malformed(M, "the token repeats a claim"))
        }
        Err(_) => return Ok(None),
    };
    let Some(serde_json::Value::String(name)) = claims.get(claim) else {
        return Ok(None);
    };
    // Java's trim(): code points up to U+0020.
    if name.chars().all(|c| c <= ' ') {
        return Err(malformed(M, "the principal claim is blank"));
    }
    Ok(Some(name.clone()))
}

const REPEATED: &str = "repeated member name";

/// A JSON object whose member names are unique (top level only: claims are top-level members).
struct UniqueClaims(HashMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueClaims, A::Error> {
                let mut out = HashMap::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom(REPEATED));
                    }
                }
                Ok(UniqueClaims(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks `proxy.oauthbearer_sub_claim_name` (pushes a problem when blank or padded: Kafka trims
/// its claim names, so a padded name could never match the broker's).
pub fn validate_claim_name(name: &str, path: &str, problems: &mut Vec<String>) {
    if name.trim().is_empty() {
        problems.push(format!(
            "{path}: must name the JWT claim the broker takes the principal from (Kafka's sasl.oauthbearer.sub.claim.name, default `sub`)"
        ));
    } else if name.trim() != name {
        problems.push(format!(
            "{path}: `{}` has leading or trailing whitespace; the broker trims claim names, write it without",
            name.escape_debug()
        ));
    }
}
