//! One error vocabulary for everything the proxy answers a client with.
//!
//! A [`ProxyError`] says who is to blame ([`ErrorSource`]: the downstream client, the upstream
//! broker, the KMS, a policy, or Kapsule itself), which Kafka error the client gets (a
//! [`ResponseError`] from kafka-protocol: no numeric error codes are declared anywhere else in the
//! proxy), whether retrying may succeed, a short [`Reason`] for metrics labels and log
//! rate-limiting, and a message for the client and the operator.
//!
//! Component errors convert with `From`: [`CodecError`] (client input by default; re-tag broker
//! bytes with [`ProxyError::from_broker`]), [`EncryptError`], [`DecryptError`], [`KmsError`] and
//! [`PolicyError`]. The record stage's per-partition outcome carries a `ProxyError` when it
//! refuses a partition.

use std::fmt;

use kafka_protocol::error::ResponseError;

use crate::crypto::wire::KeyIdError;
use crate::crypto::{DecryptError, EncryptError};
use crate::kafka::records::CodecError;
use crate::kms::KmsError;
use crate::policy::PolicyError;

/// Where an error came from: whom to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorSource {
    /// The downstream Kafka client sent something Kapsule refuses (malformed, forged, too large).
    Client,
    /// The upstream broker sent something Kapsule cannot process (stored batches that do not
    /// decode or decrypt).
    Broker,
    /// The key management service failed or refused.
    Kms,
    /// A policy rejected records or failed to answer.
    Policy,
    /// The Schema Registry failed or does not know a schema.
    SchemaRegistry,
    /// A bug or resource limit inside Kapsule.
    Internal,
}

impl ErrorSource {
    /// Stable lower-case label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Broker => "broker",
            Self::Kms => "kms",
            Self::Policy => "policy",
            Self::SchemaRegistry => "schema_registry",
            Self::Internal => "internal",
        }
    }
}

/// Why a partition was refused or a connection failed, as a bounded set of labels (metrics,
/// log rate-limiting keys): the `kind` of `kapsule_errors_total` and the `reason` of refusal logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A policy rejected a record (or the whole topic).
    PolicyRejected,
    /// A policy failed to give a usable answer.
    PolicyFailed,
    /// A record cannot be encrypted as planned.
    InvalidRecord,
    /// A produced record already carries a `kapsule.enc` header on a topic that does not accept
    /// pre-encrypted records.
    PreEncrypted,
    /// A key id that Kapsule refuses to pass to the KMS, or one the topic does not allow.
    KeyNotAllowed,
    /// The KMS was unavailable (retriable).
    KmsUnavailable,
    /// The KMS refused or failed permanently.
    KmsFailed,
    /// The Schema Registry was unavailable (retriable).
    SchemaRegistryUnavailable,
    /// A batch does not decode (CRC, truncation, bad lengths).
    Corrupt,
    /// Magic v0/v1 batches on an encrypted topic.
    LegacyFormat,
    /// The request's decompression budget was exhausted.
    TooLarge,
    /// A stored record failed authentication or is malformed.
    Undecryptable,
    /// A stored record is not encrypted on a topic that requires encryption.
    NotEncrypted,
    /// A request version or API Kapsule does not offer (connection-level refusal).
    UnsupportedVersion,
    /// A Produce request answered REQUEST_TIMED_OUT before it could be forwarded.
    TimedOut,
    /// The process-wide memory budget stayed in use for the whole wait (retriable).
    MemoryBusy,
    /// A request refused because the connection has not authenticated (connection-level).
    Unauthenticated,
    /// A topic named by an id (Produce/Fetch v13+) that no Metadata response has named yet
    /// (retriable: the client refreshes its metadata through Kapsule and retries).
    UnknownTopicId,
    /// A bug in Kapsule.
    Internal,
    // Connection-level failures (`kapsule_errors_total` only; no partition is refused).
    /// The admin endpoint was serving `admin.max_connections` already; the connection got 503.
    AdminConnectionsExhausted,
    /// An admin request without the right bearer token (401).
    AdminUnauthorized,
    /// An admin request from a browser (`Origin` header; 403, CSRF defence).
    AdminBrowserOrigin,
    /// An admin request with a `Host` not served (403, DNS-rebinding defence).
    AdminHostRefused,
    /// Accepting a client connection failed (the listener keeps running).
    Accept,
    /// A connection without a valid PROXY protocol v2 header where one is required (closed).
    ProxyProtocol,
    /// A PROXY protocol connection from a peer not in `proxy.proxy_protocol_from` (closed unread).
    ProxyProtocolUntrustedPeer,
    /// A client TLS handshake failed (usually client configuration or an expiring certificate).
    TlsHandshake,
    /// A verified client certificate names no principal (connection closed).
    TlsPrincipal,
    /// A TLS server name that names no broker under SNI routing (connection closed).
    SniUnknownName,
    /// The broker refused a SASL exchange (wrong credentials, or an attack).
    SaslFailed,
    /// A re-authentication under another principal (connection closed).
    SaslPrincipalChanged,
    /// A Produce request refused before any policy or KMS work (client not yet admitted).
    ProduceNotAdmitted,
    /// A frame over `proxy.max_frame_bytes` (connection closed).
    FrameTooLarge,
    /// A client frame that does not parse (connection closed).
    ClientProtocol,
    /// Connecting to a broker failed (unreachable, or broker TLS failing).
    UpstreamConnect,
    /// The TLS session to a broker failed mid-connection.
    UpstreamTls,
    /// A broker closed its connection with requests in flight.
    UpstreamClosed,
    /// A broker frame that does not parse (connection closed).
    UpstreamProtocol,
}

impl Reason {
    /// Stable lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PolicyRejected => "policy_rejected",
            Self::PolicyFailed => "policy_failed",
            Self::InvalidRecord => "invalid_record",
            Self::PreEncrypted => "pre_encrypted",
            Self::KeyNotAllowed => "key_not_allowed",
            Self::KmsUnavailable => "kms_unavailable",
            Self::KmsFailed => "kms_failed",
            Self::SchemaRegistryUnavailable => "schema_registry_unavailable",
            Self::Corrupt => "corrupt",
            Self::LegacyFormat => "legacy_format",
            Self::TooLarge => "too_large",
            Self::Undecryptable => "undecryptable",
            Self::NotEncrypted => "not_encrypted",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unauthenticated => "unauthenticated",
            Self::UnknownTopicId => "unknown_topic_id",
            Self::TimedOut => "timed_out",
            Self::MemoryBusy => "memory_busy",
            Self::Internal => "internal",
            Self::AdminConnectionsExhausted => "admin_connections_exhausted",
            Self::AdminUnauthorized => "admin_unauthorized",
            Self::AdminBrowserOrigin => "admin_browser_origin",
            Self::AdminHostRefused => "admin_host_refused",
            Self::Accept => "accept",
            Self::ProxyProtocol => "proxy_protocol",
            Self::ProxyProtocolUntrustedPeer => "proxy_protocol_untrusted_peer",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsPrincipal => "tls_principal",
            Self::SniUnknownName => "sni_unknown_name",
            Self::SaslFailed => "sasl_failed",
            Self::SaslPrincipalChanged => "sasl_principal_changed",
            Self::ProduceNotAdmitted => "produce_not_admitted",
            Self::FrameTooLarge => "frame_too_large",
            Self::ClientProtocol => "client_protocol",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTls => "upstream_tls",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamProtocol => "upstream_protocol",
        }
    }
}

/// An error the proxy answers a client with: source, Kafka error, retriability, reason, message,
/// and the records of the batch that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    origin: ErrorSource,
    code: ResponseError,
    retriable: bool,
    reason: Reason,
    message: String,
    records: Vec<RecordError>,
}

/// One record that caused a produce batch to be refused: its index in the batch and why (a
/// Produce response's KIP-467 `record_errors` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Index of the record in its batch.
    pub index: usize,
    /// Why it was refused (the policy's message, or what is wrong with the record).
    pub message: String,
}

/// Most records one refused batch names in its Produce response (the others are refused with
/// the batch, as Kafka refuses a batch holding an invalid record).
pub const MAX_RECORD_ERRORS: usize = 100;

impl ProxyError {
    /// An error from `origin` answered with `code`; retriable when `code` is (per Kafka's
    /// definition) except for [`ResponseError::CorruptMessage`], which Kapsule never expects to
    /// heal by itself.
    pub fn new(
        origin: ErrorSource,
        code: ResponseError,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin,
            code,
            retriable: code.is_retriable() && code != ResponseError::CorruptMessage,
            reason,
            message: message.into(),
            records: Vec::new(),
        }
    }

    /// The same error naming the records of the batch that caused it (at most
    /// [`MAX_RECORD_ERRORS`]).
    pub fn with_records(mut self, records: impl IntoIterator<Item = RecordError>) -> Self {
        self.records = records.into_iter().take(MAX_RECORD_ERRORS).collect();
        self
    }

    /// The records of the batch that caused the error (empty when it is not about records).
    pub fn records(&self) -> &[RecordError] {
        &self.records
    }

    /// The client sent something Kapsule refuses.
    pub fn client(code: ResponseError, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(ErrorSource::Client, code, reason, message)
    }

    /// A bug in Kapsule (UNKNOWN_SERVER_ERROR).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            ErrorSource::Internal,
            ResponseError::UnknownServerError,
            Reason::Internal,
            message,
        )
    }

    /// A codec error in bytes that came from the broker (a Fetch response).
    pub fn from_broker(e: CodecError) -> Self {
        let mut err = Self::from(e);
        err.origin = ErrorSource::Broker;
        err.message = format!("stored batch does not decode: {}", err.message);
        err
    }

    /// Whom to blame.
    pub fn origin(&self) -> ErrorSource {
        self.origin
    }

    /// The Kafka error the client gets.
    pub fn kafka_error(&self) -> ResponseError {
        self.code
    }

    /// The Kafka error code the client gets.
    pub fn code(&self) -> i16 {
        self.code.code()
    }

    /// True when the client should retry the same request later.
    pub fn is_retriable(&self) -> bool {
        self.retriable
    }

    /// Short bounded label of the failure.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// What failed and what to do, for the client's error message and the log.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProxyError {}

impl From<CodecError> for ProxyError {
    /// A batch the client sent does not decode: CORRUPT_MESSAGE, or RECORD_LIST_TOO_LARGE when it
    /// decompresses past the limit.
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::DecompressedTooLarge { .. } => Self::client(
                ResponseError::RecordListTooLarge,
                Reason::TooLarge,
                e.to_string(),
            ),
            _ => Self::client(
                ResponseError::CorruptMessage,
                Reason::Corrupt,
                e.to_string(),
            ),
        }
    }
}

impl From<KmsError> for ProxyError {
    /// An unavailable KMS is retriable (REQUEST_TIMED_OUT); anything else is permanent
    /// (UNKNOWN_SERVER_ERROR).
    fn from(e: KmsError) -> Self {
        if e.is_retriable() {
            Self::new(
                ErrorSource::Kms,
                ResponseError::RequestTimedOut,
                Reason::KmsUnavailable,
                e.to_string(),
            )
        } else {
            Self::new(
                ErrorSource::Kms,
                ResponseError::UnknownServerError,
                Reason::KmsFailed,
                e.to_string(),
            )
        }
    }
}

impl From<PolicyError> for ProxyError {
    /// A policy that fails to answer: POLICY_VIOLATION, never retriable; a module still
    /// compiling at start-up: REQUEST_TIMED_OUT, retriable.
    fn from(e: PolicyError) -> Self {
        let code = if e.is_retriable() {
            ResponseError::RequestTimedOut
        } else {
            ResponseError::PolicyViolation
        };
        Self::new(
            ErrorSource::Policy,
            code,
            Reason::PolicyFailed,
            e.to_string(),
        )
    }
}

impl From<KeyIdError> for ProxyError {
    /// A policy named a key id Kapsule never passes to a KMS.
    fn from(e: KeyIdError) -> Self {
        Self::new(
            ErrorSource::Policy,
            ResponseError::PolicyViolation,
            Reason::KeyNotAllowed,
            e.to_string(),
        )
    }
}

impl From<EncryptError> for ProxyError {
    /// Produce side: a rejection is POLICY_VIOLATION, an unencryptable or pre-encrypted record
    /// INVALID_RECORD, an unavailable KMS REQUEST_TIMED_OUT (retriable), the rest
    /// UNKNOWN_SERVER_ERROR.
    fn from(e: EncryptError) -> Self {
        let message = e.to_string();
        let record = e.record().map(|(index, why)| RecordError {
            index,
            message: why,
        });
        let err = match e {
            EncryptError::Rejected { .. } => Self::new(
                ErrorSource::Policy,
                ResponseError::PolicyViolation,
                Reason::PolicyRejected,
                message,
            ),
            EncryptError::InvalidKeyId { .. } => Self::new(
                ErrorSource::Policy,
                ResponseError::PolicyViolation,
                Reason::KeyNotAllowed,
                message,
            ),
            EncryptError::InvalidRecord { .. } => {
                Self::client(ResponseError::InvalidRecord, Reason::InvalidRecord, message)
            }
            EncryptError::PreEncrypted { .. } => {
                Self::client(ResponseError::InvalidRecord, Reason::PreEncrypted, message)
            }
            EncryptError::Kms(k) => {
                let mut err = Self::from(k);
                err.message = message;
                err
            }
            EncryptError::Schema { source, .. } if source.is_retriable() => Self::new(
                ErrorSource::SchemaRegistry,
                ResponseError::RequestTimedOut,
                Reason::SchemaRegistryUnavailable,
                message,
            ),
            EncryptError::Schema { .. } => {
                Self::client(ResponseError::InvalidRecord, Reason::InvalidRecord, message)
            }
            EncryptError::DecisionCount { .. } => Self::internal(message),
        };
        err.with_records(record)
    }
}

impl From<DecryptError> for ProxyError {
    /// Fetch side: an unavailable KMS is KAFKA_STORAGE_ERROR (consumers retry); everything else
    /// CORRUPT_MESSAGE (consumers stop with an error).
    fn from(e: DecryptError) -> Self {
        let message = e.to_string();
        let (origin, reason) = match &e {
            DecryptError::Kms { source, .. } if source.is_retriable() => {
                return Self::new(
                    ErrorSource::Kms,
                    ResponseError::KafkaStorageError,
                    Reason::KmsUnavailable,
                    message,
                )
            }
            DecryptError::Kms { .. } => (ErrorSource::Kms, Reason::KmsFailed),
            DecryptError::KeyNotAllowed { .. } => (ErrorSource::Broker, Reason::KeyNotAllowed),
            DecryptError::Integrity { .. } | DecryptError::Malformed { .. } => {
                (ErrorSource::Broker, Reason::Undecryptable)
            }
            DecryptError::NotEncrypted { .. } => (ErrorSource::Broker, Reason::NotEncrypted),
        };
        Self::new(origin, ResponseError::CorruptMessage, reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsErrorKind;

    #[test]
    fn kms_errors_are_retriable_only_when_transient() {
        let t: ProxyError = KmsError::new(KmsErrorKind::Transient, "k", "sealed").into();
        assert_eq!(t.kafka_error(), ResponseError::RequestTimedOut);
        assert!(t.is_retriable());
        assert_eq!(t.origin(), ErrorSource::Kms);
        let p: ProxyError = KmsError::new(KmsErrorKind::PermissionDenied, "k", "no").into();
        assert_eq!(p.kafka_error(), ResponseError::UnknownServerError);
        assert!(!p.is_retriable());
    }

    #[test]
    fn corrupt_batches_are_not_retriable_and_blame_the_sender() {
        let e: ProxyError = CodecError::UnknownCompression(6).into();
        assert_eq!(e.code(), 2);
        assert!(!e.is_retriable());
        assert_eq!(e.origin(), ErrorSource::Client);
        let b = ProxyError::from_broker(CodecError::UnknownCompression(6));
        assert_eq!(b.origin(), ErrorSource::Broker);
        assert!(b.message().starts_with("stored batch does not decode"));
        let big: ProxyError = CodecError::DecompressedTooLarge { limit: 1 }.into();
        assert_eq!(big.kafka_error(), ResponseError::RecordListTooLarge);
    }

    #[test]
    fn decrypt_failures_map_to_storage_error_or_corrupt_message() {
        let t: ProxyError = DecryptError::Kms {
            index: 0,
            source: KmsError::new(KmsErrorKind::Transient, "k", "down"),
        }
        .into();
        assert_eq!(t.kafka_error(), ResponseError::KafkaStorageError);
        assert!(t.is_retriable());
        let n: ProxyError = DecryptError::NotEncrypted { index: 3 }.into();
        assert_eq!(n.kafka_error(), ResponseError::CorruptMessage);
        assert_eq!(n.reason(), Reason::NotEncrypted);
        assert!(!n.is_retriable());
    }
}
