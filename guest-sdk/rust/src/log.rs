//! Logging to Kapsule's log through the `log` import.
//!
//! Messages are rate-limited (default 20 per second per binding; the rest are dropped and
//! counted) and truncated (default 1 KiB). Never log record contents: they are plaintext.

use crate::__bindings::{kapsule::policy::types::Level, log as host_log};

/// Logs at trace level.
pub fn trace(message: &str) {
    host_log(Level::Trace, message)
}

/// Logs at debug level.
pub fn debug(message: &str) {
    host_log(Level::Debug, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    host_log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    host_log(Level::Warn, message)
}

/// Logs at error level.
pub fn error(message: &str) {
    host_log(Level::Error, message)
}
