//! Following a connection's SASL exchange: which principal the broker authenticated, and which
//! requests may pass before it did.
//!
//! Kapsule relays SaslHandshake and SaslAuthenticate to the broker untouched; it never checks a
//! password or a token itself. It reads the *name* the client claims from the client's first
//! SASL message and trusts it only once the broker's SaslAuthenticate answer shows the exchange
//! succeeded:
//!
//! | mechanism          | name taken from                                   | trusted after                          |
//! |--------------------|---------------------------------------------------|----------------------------------------|
//! | PLAIN              | `authcid` (`authzid` must be empty or equal)      | the first answer, error code 0         |
//! | SCRAM-SHA-256/512  | `n=` of client-first (`=2C`/`=3D` unescaped; `a=` must be empty or equal) | the second answer (server-final `v=…`), error code 0 |
//! | OAUTHBEARER        | the JWT claim `proxy.oauthbearer_sub_claim_name` (default `sub`), else the `a=` authzid (both set: must be equal) | the first answer, error code 0 and no error challenge |
//!
//! The token is decoded without verification: the broker verifies it, Kapsule only needs the
//! name the broker will have used. Every message is parsed exactly as the broker parses it, and
//! anything the broker would read differently from Kapsule (an OAUTHBEARER message repeating a
//! key, see [`oauthbearer`]) is refused before it is relayed. A client whose authorization id differs from its
//! authentication id is refused (the broker would run under one of two names and Kapsule cannot
//! tell which).
//!
//! Once a connection has sent a SaslHandshake, nothing but ApiVersions, SaslHandshake and
//! SaslAuthenticate may pass until the exchange succeeded; anything else closes the connection
//! and is never forwarded. With `proxy.authentication: required` the same holds for connections
//! that never start SASL and have no TLS client certificate. A successful re-authentication
//! (KIP-368) under a different name closes the connection.
//!
//! SaslHandshake v0 is followed by raw, unframed SASL tokens that a Kafka-aware proxy cannot
//! parse: ApiVersions offers SaslHandshake v1 only ([`MIN_HANDSHAKE_VERSION`]) and v0 is
//! refused.
//!
//! Nothing here logs or formats SASL bytes: parse errors say what was malformed, never what it
//! contained, and no type holding client bytes derives `Debug` output that reaches a log line.

use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;

use super::session::ClientSession;
use crate::kafka::frame::{decode_request, decode_response, encode_response, RequestMeta};
use crate::principal::{AuthMechanism, Principal};

pub mod oauthbearer;

/// Lowest SaslHandshake version Kapsule offers: v0 is followed by unframed SASL tokens.
pub const MIN_HANDSHAKE_VERSION: i16 = 1;

/// Longest principal name accepted (bytes); longer names are refused as malformed.
pub const MAX_PRINCIPAL_BYTES: usize = 1024;

/// The SASL mechanisms Kapsule can follow, by their Kafka names.
pub const MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// `proxy.authentication`: whether connections without a principal may use the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticationMode {
    /// Relay whatever the broker accepts (default): a broker without authentication serves
    /// anonymous clients through Kapsule too.
    #[default]
    Optional,
    /// Only ApiVersions, SaslHandshake and SaslAuthenticate pass on a connection with no
    /// principal (neither SASL accepted by the broker nor a verified TLS client certificate);
    /// anything else closes the connection. A defence against a broker left without
    /// authentication.
    Required,
}

/// Why Kapsule closes a connection over its authentication. Each message says what happened
/// and what to do; none contains SASL bytes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SaslRefusal {
    /// SaslHandshake v0 (raw SASL tokens follow it); fatal for the connection.
    #[error("SaslHandshake v0 is followed by unframed SASL tokens that Kapsule cannot relay; use a client that sends SaslHandshake v1 (offered in ApiVersions)")]
    HandshakeV0,
    /// A request other than ApiVersions/SASL while the SASL exchange had not succeeded.
    #[error("{api} sent before SASL authentication completed; only ApiVersions, SaslHandshake and SaslAuthenticate may come first")]
    BeforeAuthentication {
        /// The refused API.
        api: String,
    },
    /// A request on a connection with no principal while `proxy.authentication: required`.
    #[error("{api} on an unauthenticated connection and proxy.authentication is `required`; authenticate with SASL (PLAIN, SCRAM or OAUTHBEARER) or a TLS client certificate")]
    Unauthenticated {
        /// The refused API.
        api: String,
    },
    /// SaslAuthenticate with no SaslHandshake accepted before it.
    #[error("SaslAuthenticate without an accepted SaslHandshake; send SaslHandshake v1 first")]
    NoMechanism,
    /// The client's first SASL message cannot be parsed.
    #[error("malformed {mechanism} client message: {what}")]
    Malformed {
        /// Mechanism label.
        mechanism: &'static str,
        /// What is wrong (never the bytes).
        what: &'static str,
    },
    /// The authorization id names someone other than the authenticated user.
    #[error("{mechanism}: the authorization id differs from the authenticated name; Kapsule cannot tell which identity the broker grants, so it refuses the connection (leave the authorization id empty)")]
    AuthzidMismatch {
        /// Mechanism label.
        mechanism: &'static str,
    },
    /// A re-authentication (KIP-368) succeeded under another name.
    #[error("re-authenticated as {new} on a connection authenticated as {old}; a connection keeps one principal")]
    PrincipalChanged {
        /// The connection's principal.
        old: Principal,
        /// The name of the later exchange.
        new: Principal,
    },
}

/// What the connection does with one request, decided by [`SaslTracker::on_request`].
pub enum RequestAction {
    /// Not a SASL request and allowed: handle as usual.
    Pass,
    /// A SASL request: forward it and pass the broker's answer to [`SaslTracker::on_response`].
    Relay(SaslExpect),
    /// Answered by Kapsule itself, never forwarded (a SaslHandshake for a mechanism Kapsule
    /// cannot follow: UNSUPPORTED_SASL_MECHANISM listing [`MECHANISMS`]).
    Answer(Bytes),
    /// Refused: close the connection, forward nothing.
    Refuse(SaslRefusal),
}

/// What the broker's answer to a relayed SASL request means; carried from request to response.
pub struct SaslExpect {
    kind: ExpectKind,
}

enum ExpectKind {
    Handshake(AuthMechanism),
    Authenticate {
        mechanism: AuthMechanism,
        round: u32,
        candidate: Principal,
    },
}

/// Why the broker's answer to a SASL request closes the connection, unrelayed.
#[derive(Debug, thiserror::Error)]
pub enum SaslAnswerError {
    /// The answer does not decode as the API and version it answers.
    #[error("{0:#}")]
    Undecodable(anyhow::Error),
    /// The answer completed an exchange Kapsule refuses (a re-authentication under another
    /// name).
    #[error(transparent)]
    Refused(#[from] SaslRefusal),
}

/// What the broker's answer to a SASL request did.
#[derive(Debug, Clone, PartialEq)]
pub enum SaslOutcome {
    /// The exchange goes on (a handshake accepted, a SCRAM first round).
    Continue,
    /// The broker accepted the exchange: the connection is now authenticated as this.
    Authenticated(Principal),
    /// The broker refused it (wrong password, unknown user, bad token): it will close the
    /// connection; the answer is relayed so the client sees the failure.
    Failed {
        /// The name the client tried.
        name: Option<String>,
        /// The broker's error code.
        error_code: i16,
    },
}

#[derive(Default)]
struct State {
    /// A SaslHandshake was seen on this connection.
    started: bool,
    /// The mechanism of the latest handshake, once the broker accepted it.
    mechanism: Option<AuthMechanism>,
    /// SaslAuthenticate requests sent since that handshake.
    rounds: u32,
    /// The name from the first SaslAuthenticate of the current exchange.
    candidate: Option<Principal>,
}

/// Per-connection SASL state, shared by the request and response stages.
pub struct SaslTracker {
    state: Mutex<State>,
    /// The JWT claim an OAUTHBEARER principal is read from (`proxy.oauthbearer_sub_claim_name`).
    oauth_claim: Arc<str>,
}

impl Default for SaslTracker {
    fn default() -> Self {
        Self::with_oauth_claim(DEFAULT_OAUTH_CLAIM.into())
    }
}

/// The broker's default `sasl.oauthbearer.sub.claim.name`.
pub const DEFAULT_OAUTH_CLAIM: &str = "sub";

impl fmt::Debug for SaslTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslTracker").finish_non_exhaustive()
    }
}

impl SaslTracker {
    /// A tracker for a connection that has not started SASL, reading OAUTHBEARER principals
    /// from the default claim `sub`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker for a connection that has not started SASL, reading OAUTHBEARER principals from
    /// claim `oauth_claim` (the broker's `sasl.oauthbearer.sub.claim.name`).
    pub fn with_oauth_claim(oauth_claim: Arc<str>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            oauth_claim,
        }
    }

    /// A tracker configured from `proxy` (`proxy.oauthbearer_sub_claim_name`).
    pub fn for_config(proxy: &crate::proxy::config::ProxyConfig) -> Self {
        Self::with_oauth_claim(proxy.oauthbearer_sub_claim_name.as_str().into())
    }

    /// Decides what happens to one client request, before anything is forwarded. Called for
    /// every request in the client's order; `frame` is the whole request (header and body).
    pub fn on_request(
        &self,
        session: &ClientSession,
        mode: AuthenticationMode,
        meta: RequestMeta,
        frame: &Bytes,
    ) -> anyhow::Result<RequestAction> {
        let api = meta.known_api();
        let mut state = self.state.lock();
        match api {
            Some(ApiKey::ApiVersions) => Ok(RequestAction::Pass),
            Some(ApiKey::SaslHandshake) => {
                if meta.api_version < MIN_HANDSHAKE_VERSION {
                    return Ok(RequestAction::Refuse(SaslRefusal::HandshakeV0));
                }
                let (_, request) =
                    decode_request::<SaslHandshakeRequest>(ApiKey::SaslHandshake, frame.clone())?;
                state.started = true;
                state.mechanism = None;
                state.rounds = 0;
                state.candidate = None;
                match mechanism(&request.mechanism) {
                    Some(m) => Ok(RequestAction::Relay(SaslExpect {
                        kind: ExpectKind::Handshake(m),
                    })),
                    None => Ok(RequestAction::Answer(unsupported_mechanism(meta)?)),
                }
            }
            Some(ApiKey::SaslAuthenticate) => {
                let Some(m) = state.mechanism else {
                    return Ok(RequestAction::Refuse(SaslRefusal::NoMechanism));
                };
                let round = state.rounds;
                state.rounds += 1;
                if round == 0 {
                    let (_, request) = decode_request::<SaslAuthenticateRequest>(
                        ApiKey::SaslAuthenticate,
                        frame.clone(),
                    )?;
                    match claimed_name(m, &request.auth_bytes, &self.oauth_claim) {
                        Ok(name) => state.candidate = Some(Principal::new(name, m)),
                        Err(refusal) => return Ok(RequestAction::Refuse(refusal)),
                    }
                }
                let Some(candidate) = state.candidate.clone() else {
                    return Ok(RequestAction::Refuse(SaslRefusal::NoMechanism));
                };
                Ok(RequestAction::Relay(SaslExpect {
                    kind: ExpectKind::Authenticate {
                        mechanism: m,
                        round,
                        candidate,
                    },
                }))
            }
            _ if session.principal().is_some() => Ok(RequestAction::Pass),
            _ if state.started => Ok(RequestAction::Refuse(SaslRefusal::BeforeAuthentication {
                api: api_label(meta.api_key),
            })),
            _ if mode == AuthenticationMode::Required => {
                Ok(RequestAction::Refuse(SaslRefusal::Unauthenticated {
                    api: api_label(meta.api_key),
                }))
            }
            _ => Ok(RequestAction::Pass),
        }
    }

    /// Reads the broker's answer to a relayed SASL request (`frame`, response header and body,
    /// at `version`) and updates the connection: a completed exchange sets the session's
    /// principal. Called in response order, before the answer is written to the client, so a
    /// client never sends its next request before the principal is set.
    ///
    /// Errors: the answer does not decode, or a re-authentication succeeded under another name
    /// ([`SaslRefusal::PrincipalChanged`]); either closes the connection without relaying it.
    pub fn on_response(
        &self,
        session: &ClientSession,
        expect: SaslExpect,
        version: i16,
        frame: &Bytes,
    ) -> Result<SaslOutcome, SaslAnswerError> {
        match expect.kind {
            ExpectKind::Handshake(m) => {
                let (_, body) = decode_response::<SaslHandshakeResponse>(
                    ApiKey::SaslHandshake,
                    version,
                    frame.clone(),
                )
                .map_err(SaslAnswerError::Undecodable)?;
                if body.error_code != 0 {
                    return Ok(SaslOutcome::Failed {
                        name: None,
                        error_code: body.error_code,
                    });
                }
                self.state.lock().mechanism = Some(m);
                Ok(SaslOutcome::Continue)
            }
            ExpectKind::Authenticate {
                mechanism,
                round,
                candidate,
            } => {
                let (_, body) = decode_response::<SaslAuthenticateResponse>(
                    ApiKey::SaslAuthenticate,
                    version,
                    frame.clone(),
                )
                .context("decoding the broker's SaslAuthenticate answer")
                .map_err(SaslAnswerError::Undecodable)?;
                if body.error_code != 0 {
                    return Ok(SaslOutcome::Failed {
                        name: Some(candidate.name().to_owned()),
                        error_code: body.error_code,
                    });
                }
                let scram = matches!(
                    mechanism,
                    AuthMechanism::SaslScramSha256 | AuthMechanism::SaslScramSha512
                );
                if scram && round == 1 && body.auth_bytes.starts_with(b"e=") {
                    // A server-final error (e.g. `e=invalid-proof`) some brokers send with
                    // error code 0 (tansu 0.6): a failure all the same.
                    return Ok(SaslOutcome::Failed {
                        name: Some(candidate.name().to_owned()),
                        error_code: ResponseError::SaslAuthenticationFailed.code(),
                    });
                }
                let done = match mechanism {
                    AuthMechanism::SaslPlain => round == 0,
                    AuthMechanism::SaslScramSha256 | AuthMechanism::SaslScramSha512 => {
                        round == 1 && body.auth_bytes.starts_with(b"v=")
                    }
                    // A non-empty answer is an error challenge; the broker fails the next round.
                    AuthMechanism::SaslOauthBearer => round == 0 && body.auth_bytes.is_empty(),
                    AuthMechanism::TlsClientCertificate => false,
                };
                if !done {
                    return Ok(SaslOutcome::Continue);
                }
                match session.set_principal(candidate.clone()) {
                    Ok(()) => Ok(SaslOutcome::Authenticated(candidate)),
                    Err(new) => {
                        let old = session.principal().cloned().unwrap_or_else(|| new.clone());
                        Err(SaslRefusal::PrincipalChanged { old, new }.into())
                    }
                }
            }
        }
    }
}

/// The Kafka name of a mechanism Kapsule follows.
fn mechanism(name: &str) -> Option<AuthMechanism> {
    Some(match name {
        "PLAIN" => AuthMechanism::SaslPlain,
        "SCRAM-SHA-256" => AuthMechanism::SaslScramSha256,
        "SCRAM-SHA-512" => AuthMechanism::SaslScramSha512,
        "OAUTHBEARER" => AuthMechanism::SaslOauthBearer,
        _ => return None,
    })
}

/// UNSUPPORTED_SASL_MECHANISM for a SaslHandshake, listing the mechanisms Kapsule follows.
fn unsupported_mechanism(meta: RequestMeta) -> anyhow::Result<Bytes> {
    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
    let body = SaslHandshakeResponse::default()
        .with_error_code(ResponseError::UnsupportedSaslMechanism.code())
        .with_mechanisms(
            MECHANISMS
                .iter()
                .map(|m| StrBytes::from_static_str(m))
                .collect(),
        );
    encode_response(ApiKey::SaslHandshake, meta.api_version, &header, &body)
}

fn api_label(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(api) => format!("{api:?}"),
        Err(_) => format!("API key {api_key}"),
    }
}

/// The name a client's first SASL message claims, checked for the rules in the module docs;
/// `oauth_claim` is the JWT claim an OAUTHBEARER principal is read from.
pub fn claimed_name(
    mechanism: AuthMechanism,
    message: &[u8],
    oauth_claim: &str,
) -> Result<String, SaslRefusal> {
    let label = mechanism.label();
    let name = match mechanism {
        AuthMechanism::SaslPlain => plain_name(message)?,
        AuthMechanism::SaslScramSha256 | AuthMechanism::SaslScramSha512 => {
            scram_name(label, message)?
        }
        AuthMechanism::SaslOauthBearer => oauth_name(message, oauth_claim)?,
        AuthMechanism::TlsClientCertificate => {
            return Err(malformed(label, "not a SASL mechanism"))
        }
    };
    if name.is_empty() {
        return Err(malformed(label, "empty user name"));
    }
    if name.len() > MAX_PRINCIPAL_BYTES {
        return Err(malformed(label, "user name longer than 1024 bytes"));
    }
    Ok(name)
}

fn malformed(mechanism: &'static str, what: &'static str) -> SaslRefusal {
    SaslRefusal::Malformed { mechanism, what }
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`.
fn plain_name(message: &[u8]) -> Result<String, SaslRefusal> {
    let m = "PLAIN";
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(_password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            m,
            "expected authzid, authcid and password separated by NUL",
        ));
    };
    let authcid =
        std::str::from_utf8(authcid).map_err(|_| malformed(m, "user name is not UTF-8"))?;
    if !authzid.is_empty() && authzid != authcid.as_bytes() {
        return Err(SaslRefusal::AuthzidMismatch { mechanism: m });
    }
    Ok(authcid.to_owned())
}

/// SCRAM client-first (RFC 5802): `gs2-header n=saslname,r=nonce[,ext]` where the gs2 header is
/// `n,,`, `y,,` or with `a=saslname` between the commas.
fn scram_name(m: &'static str, message: &[u8]) -> Result<String, SaslRefusal> {
    let text = std::str::from_utf8(message).map_err(|_| malformed(m, "not UTF-8"))?;
    let (authzid, bare) = gs2_header(m, text)?;
    let user = bare
        .strip_prefix("n=")
        .ok_or_else(|| malformed(m, "client-first message does not start with n="))?;
    let user = unescape_saslname(m, user.split(',').next().unwrap_or_default())?;
    if authzid.is_some_and(|a| a != user) {
        return Err(SaslRefusal::AuthzidMismatch { mechanism: m });
    }
    Ok(user)
}

/// Parses the GS2 header (RFC 5801) that opens SCRAM and OAUTHBEARER client-first messages:
/// `n,,`, `y,,` or with `a=saslname` between the commas. Returns the authzid, if any, and what
/// follows the header. Channel binding (`p=`) is refused.
fn gs2_header<'a>(
    m: &'static str,
    text: &'a str,
) -> Result<(Option<String>, &'a str), SaslRefusal> {
    let mut parts = text.splitn(3, ',');
    let (Some(cbind), Some(authzid), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(m, "missing GS2 header"));
    };
    if cbind != "n" && cbind != "y" {
        return Err(malformed(m, "channel binding is not supported"));
    }
    let authzid = match authzid {
        "" => None,
        a => Some(unescape_saslname(
            m,
            a.strip_prefix("a=")
                .ok_or_else(|| malformed(m, "bad authzid"))?,
        )?),
    };
    Ok((authzid, rest))
}

/// Undoes SCRAM's saslname escaping: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn unescape_saslname(m: &'static str, s: &str) -> Result<String, SaslRefusal> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let escaped = rest.get(i..i + 3);
        match escaped {
            Some("=2C") | Some("=2c") => out.push(','),
            Some("=3D") | Some("=3d") => out.push('='),
            _ => return Err(malformed(m, "user name has a bad =XX escape")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// OAUTHBEARER client-first (RFC 7628), parsed with Kafka's exact grammar ([`oauthbearer`]).
fn oauth_name(message: &[u8], claim: &str) -> Result<String, SaslRefusal> {
    let first = oauthbearer::parse(message)?;
    oauthbearer::principal_name(&first, claim)
}

#[cfg(test)]
mod tests;
