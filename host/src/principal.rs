//! Who a client connection is: the principal it authenticated as, if any.
//!
//! A [`Principal`] is learnt by the proxy (from a SASL exchange the broker accepted, or from a
//! verified TLS client certificate) and is then read by the record stage, log lines, metrics and
//! policies. It never carries credentials: only the name the client is known by and how that
//! name was established.

use std::fmt;

/// How a connection's principal was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    /// SASL/PLAIN, accepted by the broker.
    SaslPlain,
    /// SASL/SCRAM-SHA-256, accepted by the broker.
    SaslScramSha256,
    /// SASL/SCRAM-SHA-512, accepted by the broker.
    SaslScramSha512,
    /// SASL/OAUTHBEARER, accepted by the broker.
    SaslOauthBearer,
    /// A TLS client certificate verified against `proxy.tls.client_ca_file`.
    TlsClientCertificate,
}

impl AuthMechanism {
    /// A stable name for logs, metrics and policies, e.g. `SCRAM-SHA-256` or `mTLS`.
    pub fn label(self) -> &'static str {
        match self {
            AuthMechanism::SaslPlain => "PLAIN",
            AuthMechanism::SaslScramSha256 => "SCRAM-SHA-256",
            AuthMechanism::SaslScramSha512 => "SCRAM-SHA-512",
            AuthMechanism::SaslOauthBearer => "OAUTHBEARER",
            AuthMechanism::TlsClientCertificate => "mTLS",
        }
    }
}

/// An authenticated identity: a SASL user name, an OAuth subject, or a certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    name: String,
    mechanism: AuthMechanism,
}

impl Principal {
    /// A principal called `name`, established by `mechanism`.
    pub fn new(name: impl Into<String>, mechanism: AuthMechanism) -> Self {
        Principal {
            name: name.into(),
            mechanism,
        }
    }

    /// The name the client is known by (e.g. `alice`, or `CN=alice,O=Example`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the name was established.
    pub fn mechanism(&self) -> AuthMechanism {
        self.mechanism
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.mechanism.label())
    }
}
