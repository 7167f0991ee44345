//! Rotation state of one encryption DEK: usage counters, the limits that retire it and the
//! reason it was retired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::time::Instant;

use super::cache::SharedResult;
use super::{DekConfig, MAX_ENCRYPTIONS_HARD_LIMIT};
use crate::crypto::primitives::{Dek, NONCE_LEN};

/// Why an encryption DEK was retired (the `reason` label of `kapsule_dek_rotations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// Older than `max_age_secs`.
    Age,
    /// `max_encryptions` GCM encryptions reached.
    Count,
    /// `max_bytes` plaintext bytes reached.
    Bytes,
}

impl RotationReason {
    /// The metrics label: `age`, `count` or `bytes`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Count => "count",
            Self::Bytes => "bytes",
        }
    }
}

/// An encryption DEK with its usage counters.
#[derive(Debug)]
pub struct ActiveDek {
    /// The key.
    pub dek: Arc<Dek>,
    pub(super) created: Instant,
    pub(super) nonce_prefix: [u8; 4],
    pub(super) next_counter: AtomicU64,
    pub(super) bytes: AtomicU64,
}

impl ActiveDek {
    pub(super) fn new(dek: Arc<Dek>) -> Self {
        let mut nonce_prefix = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
        Self {
            dek,
            created: Instant::now(),
            nonce_prefix,
            next_counter: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub(super) fn fresh(&self) -> bool {
        self.next_counter.load(Ordering::Relaxed) == 0
    }

    /// Which limit (if any) taking `parts`/`bytes` now would exceed.
    pub(super) fn exhausted_by(
        &self,
        cfg: &DekConfig,
        parts: u64,
        bytes: u64,
    ) -> Option<RotationReason> {
        let used = self.next_counter.load(Ordering::Relaxed);
        if used + parts > cfg.max_encryptions.min(MAX_ENCRYPTIONS_HARD_LIMIT) {
            // A fresh key always takes one reservation (a record with more parts than the limit).
            if !(used == 0 && parts <= MAX_ENCRYPTIONS_HARD_LIMIT) {
                return Some(RotationReason::Count);
            }
        }
        if self.created.elapsed() >= Duration::from_secs(cfg.max_age_secs) {
            return Some(RotationReason::Age);
        }
        if !self.fresh() && self.bytes.load(Ordering::Relaxed) + bytes > cfg.max_bytes {
            return Some(RotationReason::Bytes);
        }
        None
    }

    pub(super) fn near_end(&self, cfg: &DekConfig) -> bool {
        let f = cfg.refresh_ahead_fraction;
        let age = self.created.elapsed().as_secs_f64();
        age >= cfg.max_age_secs as f64 * f
            || self.next_counter.load(Ordering::Relaxed) as f64 >= cfg.max_encryptions as f64 * f
            || self.bytes.load(Ordering::Relaxed) as f64 >= cfg.max_bytes as f64 * f
    }
}

/// A DEK plus `parts` consecutive nonces reserved for one record.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The DEK to encrypt with.
    pub dek: Arc<Dek>,
    /// Nonce of part 0; part `i` uses [`crate::crypto::primitives::nonce_at`]`(base, i)`.
    pub nonce_base: [u8; NONCE_LEN],
}

/// The DEKs of one (KEK, topic) pair: the one in use, its successor and a running generation.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) current: Option<Arc<ActiveDek>>,
    pub(super) next: Option<Arc<ActiveDek>>,
    pub(super) inflight: Option<SharedResult<()>>,
    pub(super) retry_refresh_after: Option<Instant>,
}
