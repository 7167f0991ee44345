//! Rate-limited WARN lines for per-connection failures that whoever reaches a listener controls:
//! failed TLS handshakes, bad or untrusted PROXY protocol headers and unknown SNI names. A port
//! scanner or a misconfigured client in a retry loop must not flood the log.
//!
//! Per kind at most [`LINES_PER_WINDOW`] lines are written per [`WINDOW`]; the first line written
//! after lines were suppressed carries `suppressed=K`. The failures are still counted in full by
//! `kapsule_errors_total`. State is one small window per kind: nothing a client sends grows it.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines written per kind and window (as the refusal log of the record stage).
pub const LINES_PER_WINDOW: u32 = 5;
/// Length of a rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Which per-connection failure a WARN line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionWarning {
    /// The TLS handshake failed, timed out, or the client sent plaintext to a TLS listener.
    TlsHandshake,
    /// A missing, malformed or untrusted PROXY protocol header.
    ProxyHeader,
    /// A TLS server name that names no broker (`proxy.sni`).
    SniUnknownName,
}

const KINDS: usize = 3;

impl ConnectionWarning {
    fn slot(self) -> usize {
        match self {
            ConnectionWarning::TlsHandshake => 0,
            ConnectionWarning::ProxyHeader => 1,
            ConnectionWarning::SniUnknownName => 2,
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// The per-kind windows of one proxy instance.
#[derive(Debug)]
pub struct ConnectionWarnings {
    windows: [Mutex<Window>; KINDS],
}

impl Default for ConnectionWarnings {
    fn default() -> Self {
        Self {
            windows: std::array::from_fn(|_| {
                Mutex::new(Window {
                    start: None,
                    written: 0,
                    suppressed: 0,
                })
            }),
        }
    }
}

impl ConnectionWarnings {
    /// Whether a WARN line of `kind` is written now. `Some(k)`: write it, mentioning `k` lines
    /// suppressed since the last one written; `None`: count it and write nothing.
    pub fn admit(&self, kind: ConnectionWarning) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: ConnectionWarning, now: Instant) -> Option<u64> {
        let mut w = self.windows[kind.slot()].lock();
        match w.start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                w.start = Some(now);
                w.written = 0;
            }
        }
        if w.written < LINES_PER_WINDOW {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_limited_per_kind_and_window_and_report_what_was_suppressed() {
        let w = ConnectionWarnings::default();
        let t0 = Instant::now();
        let tls = ConnectionWarning::TlsHandshake;
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(w.admit_at(tls, t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(w.admit_at(tls, t0), None);
        }
        // Other kinds have their own window.
        assert_eq!(w.admit_at(ConnectionWarning::ProxyHeader, t0), Some(0));
        assert_eq!(w.admit_at(ConnectionWarning::SniUnknownName, t0), Some(0));
        // The next window writes again and says how many were dropped.
        let t1 = t0 + WINDOW;
        assert_eq!(w.admit_at(tls, t1), Some(1000));
        assert_eq!(w.admit_at(tls, t1), Some(0));
    }
}
