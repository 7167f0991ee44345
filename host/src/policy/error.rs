//! [`PolicyError`]: a policy failed to give a usable answer.

/// A policy failed to give a usable answer. The affected records must not be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The guest trapped (panic, unreachable, out-of-bounds access, stack overflow, ...).
    #[error("policy {binding} trapped: {message}; the instance was discarded")]
    Trap {
        /// Which binding.
        binding: String,
        /// The trap, as wasmtime reports it.
        message: String,
    },
    /// The guest ran past its call deadline.
    #[error(
        "policy {binding} exceeded its {timeout_ms} ms call deadline (CPU time; 8 times that plus \
         100 ms while waiting for a CPU); the instance was discarded (raise \
         policy.limits.call_timeout_ms if the policy is legitimately slow)"
    )]
    Deadline {
        /// Which binding.
        binding: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error(
        "policy {binding} exceeded its {limit_mib} MiB memory limit; the instance was discarded \
         (raise policy.limits.memory_mib if needed)"
    )]
    MemoryExhausted {
        /// Which binding.
        binding: String,
        /// The cap.
        limit_mib: u64,
    },
    /// The guest's answer breaks the contract (wrong decision count, bad JSON pointer, ...).
    #[error("policy {binding} returned a malformed answer: {reason}")]
    Malformed {
        /// Which binding.
        binding: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest named a key outside the binding's `allowed_key_ids`.
    #[error(
        "policy {binding} named key id `{key_id}` for topic `{topic}`, which its allowed_key_ids \
         do not allow"
    )]
    KeyNotAllowed {
        /// Which binding.
        binding: String,
        /// The topic.
        topic: String,
        /// The refused key id.
        key_id: String,
    },
    /// The binding's module is still being compiled at start-up; retriable. Its records are
    /// not forwarded.
    #[error(
        "policy {binding} is still compiling its module; retry shortly (nothing was forwarded)"
    )]
    Loading {
        /// Which binding.
        binding: String,
    },
    /// The policy could not be run at all (instance creation failed, pool stuck, task lost).
    #[error("policy {binding} is unavailable: {reason}")]
    Unavailable {
        /// Which binding.
        binding: String,
        /// Why.
        reason: String,
    },
}

impl PolicyError {
    /// The binding the error belongs to (`bindings[i] (file)`).
    pub fn binding(&self) -> &str {
        match self {
            Self::Trap { binding, .. }
            | Self::Deadline { binding, .. }
            | Self::MemoryExhausted { binding, .. }
            | Self::Malformed { binding, .. }
            | Self::KeyNotAllowed { binding, .. }
            | Self::Loading { binding }
            | Self::Unavailable { binding, .. } => binding,
        }
    }

    /// `true` only for [`PolicyError::Loading`]: otherwise retrying the same records against
    /// the same policy gives the same answer.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Loading { .. })
    }

    /// Short machine-readable kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Trap { .. } => "trap",
            Self::Deadline { .. } => "deadline",
            Self::MemoryExhausted { .. } => "memory",
            Self::Malformed { .. } => "malformed",
            Self::KeyNotAllowed { .. } => "key_not_allowed",
            Self::Loading { .. } => "loading",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Checks RFC 6901 syntax: empty is refused (use `whole`), otherwise `/`-separated tokens where
/// `~` is only followed by `0` or `1`.
pub fn validate_json_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty JSON pointer (it would name the whole value; use `whole`)".into());
    }
    if !p.starts_with('/') {
        return Err(format!("JSON pointer `{p}` must start with `/`"));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "JSON pointer `{p}` has `~` not followed by 0 or 1 (escape `~` as `~0`, `/` as `~1`)"
            ));
        }
    }
    Ok(())
}
