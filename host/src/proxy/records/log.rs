//! Rate-limited refusal log lines: a hostile or broken client must not flood the log.
//!
//! Per (direction, topic, reason) at most [`LINES_PER_WINDOW`] lines are written per
//! [`WINDOW`]; the next line written after a window with suppressed lines carries
//! `suppressed=K`. At most [`MAX_KEYS`] keys are tracked: beyond that every topic shares one
//! key, so client-chosen topic names cannot grow this state. Client-controlled strings (topic
//! names, messages holding header names or key ids) have their control characters escaped
//! ([`escape`]), so they cannot forge log lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::error::{ProxyError, Reason};

/// Lines written per key and window.
pub const LINES_PER_WINDOW: u32 = 5;
/// Length of a rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Keys tracked before topics are pooled under one key.
pub const MAX_KEYS: usize = 1024;

/// Which way the refused records were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A Produce partition refused before the broker.
    Produce,
    /// A Fetch partition failed before the client.
    Fetch,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// The refusal log of one proxy instance.
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<(Direction, String, Reason), Window>>,
}

/// What to do with one refusal line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it, mentioning this many lines suppressed since the last one written.
    Write(u64),
    /// Count it and write nothing.
    Suppress,
}

impl RefusalLog {
    /// Decides whether a refusal of `topic` for `reason` is written now.
    pub fn admit(&self, direction: Direction, topic: &str, reason: Reason, now: Instant) -> Admit {
        let mut windows = self.windows.lock();
        let pooled = windows.len() >= MAX_KEYS
            && !windows.contains_key(&(direction, topic.to_owned(), reason));
        let key = (
            direction,
            if pooled {
                "*".to_owned()
            } else {
                topic.to_owned()
            },
            reason,
        );
        let w = windows.entry(key).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.written = 0;
        }
        if w.written < LINES_PER_WINDOW {
            w.written += 1;
            Admit::Write(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }

    /// Decides whether a connection-level line for `reason` (a refused request version, a
    /// Produce answered REQUEST_TIMED_OUT) is written now: same window and limit as partition
    /// refusals, one key per reason. `Some(k)`: write it, mentioning `k` suppressed lines.
    pub fn admit_connection_line(&self, reason: Reason) -> Option<u64> {
        // `~` cannot appear in a Kafka topic name, so this key never collides with a topic's.
        match self.admit(Direction::Produce, "~connection", reason, Instant::now()) {
            Admit::Write(suppressed) => Some(suppressed),
            Admit::Suppress => None,
        }
    }

    /// Writes one WARN line for a refused partition, unless rate-limited.
    pub fn refused(
        &self,
        direction: Direction,
        peer: SocketAddr,
        topic: &str,
        partition: i32,
        error: &ProxyError,
    ) {
        let reason = error.reason();
        let Admit::Write(suppressed) = self.admit(direction, topic, reason, Instant::now()) else {
            return;
        };
        let topic = escape(topic);
        let message = escape(error.message());
        let source = error.origin().label();
        let reason = reason.label();
        let code = error.code();
        match direction {
            Direction::Produce => warn!(
                %peer, %topic, partition, code, source, reason, suppressed, error = %message,
                "refusing produce partition"
            ),
            Direction::Fetch => warn!(
                %peer, %topic, partition, code, source, reason, suppressed, error = %message,
                "failing fetch partition"
            ),
        }
    }
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), so a client-chosen string cannot
/// break or forge a log line; everything else is kept as it is.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_limited_per_topic_and_reason_then_summarised() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let d = Direction::Produce;
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(log.admit(d, "a", Reason::Corrupt, t0), Admit::Write(0));
        }
        for _ in 0..100 {
            assert_eq!(log.admit(d, "a", Reason::Corrupt, t0), Admit::Suppress);
        }
        // Another topic or reason has its own allowance.
        assert_eq!(log.admit(d, "b", Reason::Corrupt, t0), Admit::Write(0));
        assert_eq!(log.admit(d, "a", Reason::TooLarge, t0), Admit::Write(0));
        // The next window's first line reports what was suppressed.
        let t1 = t0 + WINDOW;
        assert_eq!(log.admit(d, "a", Reason::Corrupt, t1), Admit::Write(100));
        assert_eq!(log.admit(d, "a", Reason::Corrupt, t1), Admit::Write(0));
    }

    #[test]
    fn connection_lines_are_limited_per_reason_and_apart_from_topics() {
        let log = RefusalLog::default();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(
                log.admit_connection_line(Reason::UnsupportedVersion),
                Some(0)
            );
        }
        // A client hammering unsupported versions gets no more lines in this window...
        for _ in 0..1000 {
            assert_eq!(log.admit_connection_line(Reason::UnsupportedVersion), None);
        }
        // ...while timeouts and partition refusals keep their own allowance.
        assert_eq!(log.admit_connection_line(Reason::TimedOut), Some(0));
        let now = Instant::now();
        assert_eq!(
            log.admit(
                Direction::Produce,
                "orders",
                Reason::UnsupportedVersion,
                now
            ),
            Admit::Write(0)
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("orders"), "orders");
        assert_eq!(escape("a\nWARN forged"), "a\\nWARN forged");
        assert_eq!(escape("k'\u{1b}[31m"), "k'\\u{1b}[31m");
    }

    #[test]
    fn client_chosen_topic_names_cannot_grow_the_state() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            log.admit(Direction::Fetch, &format!("t{i}"), Reason::Corrupt, t0);
        }
        assert!(log.windows.lock().len() <= MAX_KEYS + 1);
    }
}
