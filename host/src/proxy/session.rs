//! One client connection's identity, shared by its stages: the peer address and, once
//! authentication succeeded, the [`Principal`].

use std::net::SocketAddr;
use std::sync::OnceLock;

use crate::principal::Principal;

/// What the proxy knows about the client on one connection.
///
/// The principal is set at most once per connection (Kafka does not re-authenticate a
/// connection as someone else) and only after the broker accepted the authentication or the TLS
/// layer verified a client certificate; before that, [`ClientSession::principal`] is `None`.
#[derive(Debug)]
pub struct ClientSession {
    peer: SocketAddr,
    principal: OnceLock<Principal>,
    upstream: OnceLock<String>,
}

impl ClientSession {
    /// A session for a client at `peer` (its real address, after any PROXY protocol header),
    /// not yet authenticated.
    pub fn new(peer: SocketAddr) -> Self {
        ClientSession {
            peer,
            principal: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }

    /// A session already authenticated as `principal` (e.g. by a TLS client certificate).
    pub fn authenticated(peer: SocketAddr, principal: Principal) -> Self {
        let session = ClientSession::new(peer);
        let _ = session.principal.set(principal);
        session
    }

    /// A copy of this session as it is now: later changes (a principal set by a SASL answer)
    /// do not reach the copy. Taken when a request is read, so its response is handled for the
    /// client the broker served it to.
    pub fn snapshot(&self) -> ClientSession {
        match self.principal() {
            Some(p) => ClientSession::authenticated(self.peer, p.clone()),
            None => ClientSession::new(self.peer),
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The broker address this connection is relayed to, once connected.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.get().map(String::as_str)
    }

    /// Records the broker address this connection is relayed to (first call wins).
    pub fn set_upstream(&self, upstream: &str) {
        let _ = self.upstream.set(upstream.to_owned());
    }

    /// The authenticated principal, if authentication has succeeded on this connection.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get()
    }

    /// Records that the connection authenticated as `principal`. Fails, keeping the first
    /// principal, when the connection had already authenticated as someone else.
    pub fn set_principal(&self, principal: Principal) -> Result<(), Principal> {
        match self.principal.set(principal) {
            Ok(()) => Ok(()),
            Err(again) if self.principal.get() == Some(&again) => Ok(()),
            Err(other) => Err(other),
        }
    }
}
