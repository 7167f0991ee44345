//! Which KEK ids Kapsule ever passes to a KMS: checked on the host first, so the KMS permission
//! boundary is never the only defence against path tricks. Used by the encryption stage (policy
//! answers, stored descriptors) and by the KMS configurations (key ids named in the config).

use std::collections::BTreeMap;

/// Longest KEK id accepted, in bytes (the descriptor's length field is one byte).
pub const MAX_KEY_ID_LEN: usize = 255;

/// Why a KEK id was refused before any KMS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdError {
    /// Empty id.
    #[error("key id is empty")]
    Empty,
    /// Longer than [`MAX_KEY_ID_LEN`] bytes.
    #[error("key id is {0} bytes long (at most {MAX_KEY_ID_LEN})")]
    TooLong(usize),
    /// Contains `/` or `\\`: it would address another KMS path (`a/../b`, `transit/keys/x`).
    #[error("key id contains a path separator ('/' or '\\')")]
    PathSeparator,
    /// Contains `..`.
    #[error("key id contains '..'")]
    DotDot,
    /// Contains a control character (newlines would forge log lines, NUL truncates paths).
    #[error("key id contains a control character")]
    Control,
}

/// Checks a KEK id on the host before it reaches any KMS: 1..=255 bytes, no `/` or `\\`, no
/// `..`, no control characters. A policy answer (Produce) or a stored descriptor (Fetch) naming
/// such an id is refused without a KMS call, so the KMS permission boundary is never the only
/// line of defence against path tricks like `tenant-b-x/../tenant-a-secret`.
pub fn validate_key_id(id: &str) -> Result<(), KeyIdError> {
    if id.is_empty() {
        return Err(KeyIdError::Empty);
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(KeyIdError::TooLong(id.len()));
    }
    if id.contains(['/', '\\']) {
        return Err(KeyIdError::PathSeparator);
    }
    if id.contains("..") {
        return Err(KeyIdError::DotDot);
    }
    if id.chars().any(char::is_control) {
        return Err(KeyIdError::Control);
    }
    Ok(())
}

/// Appends the problems of a back end's `keys` map (Kapsule key id → the KMS's name for the key)
/// to `problems`, naming them under `path`: every id must pass [`validate_key_id`], every name
/// `check_name` (which says what is wrong with it).
pub(crate) fn validate_key_map<T>(
    path: &str,
    keys: &BTreeMap<String, String>,
    check_name: impl Fn(&str) -> Result<T, String>,
    problems: &mut Vec<String>,
) {
    for (id, name) in keys {
        if let Err(why) = validate_key_id(id) {
            problems.push(format!(
                "{path}.keys: Kapsule key id '{}' is invalid: {why}",
                id.escape_debug()
            ));
        }
        if let Err(why) = check_name(name) {
            problems.push(format!("{path}.keys.{id}: {why}"));
        }
    }
}
