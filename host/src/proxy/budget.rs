//! Process-wide memory budget: one bound, in bytes, on what all connections together hold in
//! record data being transformed and in broker responses not yet written to their clients.
//!
//! Per-request and per-connection caps do not bound a process: a 200 MiB per-request
//! decompression budget times 20 concurrent requests, or one 16 MiB Fetch response times 40
//! consumers that stopped reading, is gigabytes. So every such allocation first takes its bytes
//! from one [`MemoryBudget`] (a tokio [`Semaphore`] counting KiB, `acquire_many` over bytes) and
//! gives them back when the memory is freed ([`Charge`] is an RAII guard):
//!
//! - **Transformation** (`proxy/records`): a batch is charged, before it is decompressed,
//!   [`WORKING_COPIES`] times the bytes it may decompress to (an uncompressed batch: its size):
//!   the decoded records, their encrypted or decrypted copy and the re-encoded records, which
//!   are compressed as they are written, live at the same time. Once the batch is re-encoded,
//!   [`OUTPUT_COPIES`] times its new bytes stay charged for the request until the frame that
//!   carries them is written to the broker (produce) or built (fetch), and the rest is given
//!   back. A request waits at most `memory_wait_ms` for a charge, then its partition is refused
//!   with a retriable error (see `records`); one whose held records and next charge exceed the
//!   whole budget is refused at once.
//! - **Unwritten responses** (`proxy/connection`): a broker response is charged its size before
//!   it is read from the broker and until it is written to the client. Each connection also has
//!   its own allowance ([`ResponseGate`]): once it holds that many unwritten bytes (at least one
//!   response, however large) the proxy stops reading that broker connection and that client's
//!   requests, as a broker mutes a channel until its response is sent. A response that waits
//!   longer than `memory_wait_ms` for the global budget closes its connection (the client
//!   reconnects and retries); nothing is dropped silently.
//!
//! Metrics: `kapsule_memory_budget_bytes` (the bound), `kapsule_memory_in_use_bytes`,
//! `kapsule_memory_waits_total{use}`, `kapsule_memory_refusals_total{use}`.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::metrics::{counter_family, gauge_family, MetricsSource};

/// Default process-wide bound: 512 MiB.
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 512 * 1024 * 1024;
/// Default longest wait for budget before a request is refused: 5 s.
pub const DEFAULT_MEMORY_WAIT_MS: u64 = 5_000;
/// Default unwritten response bytes one connection may hold: 1 MiB (one larger response is
/// always admitted when the connection holds nothing else).
pub const DEFAULT_RESPONSE_BYTES_PER_CONNECTION: usize = 1024 * 1024;
/// A batch being transformed is charged this many times its (decompressed) size: the decoded
/// records, the transformed (encrypted or decrypted) copy and the re-encoded records.
pub const WORKING_COPIES: usize = 3;
/// Re-encoded records are charged this many times their size until the frame that carries
/// them is written: the records, and the request or response frame they are copied into (or,
/// before that, the copy made when the buffer collecting them grows).
pub const OUTPUT_COPIES: usize = 2;

/// Granularity of the semaphore (so budgets above 4 GiB fit `acquire_many`'s `u32`).
const UNIT: usize = 1024;

/// What a charge is for (the `use` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Decompressing a Produce request's batches.
    ProduceDecompression,
    /// Decompressing a Fetch response's batches.
    FetchDecompression,
    /// A broker response held until the client reads it.
    Response,
}

impl Use {
    const ALL: [Use; 3] = [
        Use::ProduceDecompression,
        Use::FetchDecompression,
        Use::Response,
    ];

    fn label(self) -> &'static str {
        match self {
            Use::ProduceDecompression => "produce_decompression",
            Use::FetchDecompression => "fetch_decompression",
            Use::Response => "response",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Why a charge was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    /// The bytes asked for exceed the whole budget: waiting cannot help (not retriable).
    #[error("{wanted} bytes exceed the proxy's whole memory budget of {limit} bytes (proxy.memory_budget_bytes)")]
    NeverFits {
        /// Bytes asked for.
        wanted: usize,
        /// The configured bound.
        limit: usize,
    },
    /// Other requests held the budget for the whole wait (retriable: try again later).
    #[error("the proxy's memory budget of {limit} bytes stayed in use by other requests for {waited_ms} ms (proxy.memory_budget_bytes, proxy.memory_wait_ms)")]
    Busy {
        /// The configured bound.
        limit: usize,
        /// How long the request waited.
        waited_ms: u64,
    },
}

/// The process-wide bound. Cheap to share (`Arc`).
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
    per_connection: usize,
    waits: [AtomicU64; 3],
    refusals: [AtomicU64; 3],
    /// Highest bytes in use since the last [`MemoryBudget::take_peak`].
    peak: AtomicUsize,
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::new(
            DEFAULT_MEMORY_BUDGET_BYTES,
            Duration::from_millis(DEFAULT_MEMORY_WAIT_MS),
            DEFAULT_RESPONSE_BYTES_PER_CONNECTION,
        )
    }
}

/// Bytes held against a [`MemoryBudget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    permit: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Bytes held (rounded up to the budget's KiB granularity).
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits() * UNIT)
    }

    /// Moves `bytes` of this charge (rounded up to the budget's KiB, at most all it holds) into
    /// a charge of their own, so they stay held when this one is given back.
    pub fn split_off(&mut self, bytes: usize) -> Charge {
        let n = units(bytes).min(self.bytes() / UNIT);
        Charge {
            permit: self.permit.as_mut().and_then(|p| p.split(n)),
        }
    }

    /// Adds `other`'s bytes to this charge. Both must come from the same [`MemoryBudget`].
    pub fn merge(&mut self, other: Charge) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

impl MemoryBudget {
    /// A budget of `limit` bytes; a charge waits at most `wait`; each connection may hold
    /// `per_connection` unwritten response bytes (at least one response).
    pub fn new(limit: usize, wait: Duration, per_connection: usize) -> Self {
        let permits = units(limit).min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            limit: permits * UNIT,
            wait,
            per_connection,
            waits: Default::default(),
            refusals: Default::default(),
            peak: AtomicUsize::new(0),
        }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged right now.
    pub fn in_use(&self) -> usize {
        (self.limit / UNIT).saturating_sub(self.semaphore.available_permits()) * UNIT
    }

    /// The highest bytes in use since the previous call (or since start-up); starts the next
    /// period at today's use. Tells a periodic task that a burst is over.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.in_use(), Relaxed).max(self.in_use())
    }

    /// Takes `bytes` from the budget, waiting up to the configured wait for other charges to be
    /// given back. Fails at once when `bytes` exceed the whole budget.
    pub async fn charge(&self, bytes: usize, what: Use) -> Result<Charge, BudgetRefusal> {
        let charge = self.charge_inner(bytes, what).await;
        if charge.is_ok() {
            self.peak.fetch_max(self.in_use(), Relaxed);
        }
        charge
    }

    /// Takes `bytes` from the budget if they are free now; `None` (not counted as a refusal)
    /// otherwise. For work that is worth doing only when memory is plentiful.
    pub fn try_charge(&self, bytes: usize) -> Option<Charge> {
        let n = u32::try_from(units(bytes)).ok()?;
        let permit = self.semaphore.clone().try_acquire_many_owned(n).ok()?;
        self.peak.fetch_max(self.in_use(), Relaxed);
        Some(Charge {
            permit: Some(permit),
        })
    }

    async fn charge_inner(&self, bytes: usize, what: Use) -> Result<Charge, BudgetRefusal> {
        let n = units(bytes);
        if n * UNIT > self.limit {
            self.refusals[what.slot()].fetch_add(1, Relaxed);
            return Err(BudgetRefusal::NeverFits {
                wanted: bytes,
                limit: self.limit,
            });
        }
        let n = u32::try_from(n).expect("a charge within the budget fits u32 units");
        match self.semaphore.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                return Ok(Charge {
                    permit: Some(permit),
                })
            }
            Err(TryAcquireError::Closed) => unreachable!("the budget's semaphore is never closed"),
            Err(TryAcquireError::NoPermits) => {}
        }
        self.waits[what.slot()].fetch_add(1, Relaxed);
        match tokio::time::timeout(self.wait, self.semaphore.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(Charge {
                permit: Some(permit),
            }),
            Ok(Err(_)) => unreachable!("the budget's semaphore is never closed"),
            Err(_) => {
                self.refusals[what.slot()].fetch_add(1, Relaxed);
                Err(BudgetRefusal::Busy {
                    limit: self.limit,
                    waited_ms: u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// A fresh per-connection gate for unwritten responses.
    pub fn response_gate(self: &Arc<Self>) -> Arc<ResponseGate> {
        let units = units(self.per_connection);
        Arc::new(ResponseGate {
            budget: self.clone(),
            local: Arc::new(Semaphore::new(units)),
            local_units: units,
        })
    }
}

impl MetricsSource for MemoryBudget {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge_family(
            e,
            "kapsule_memory_budget_bytes",
            "Process-wide bound on decompressed record bytes and unwritten responses (proxy.memory_budget_bytes).",
            [(Vec::new(), as_i64(self.limit))],
        )?;
        gauge_family(
            e,
            "kapsule_memory_in_use_bytes",
            "Bytes charged to the memory budget now.",
            [(Vec::new(), as_i64(self.in_use()))],
        )?;
        let per = |c: &[AtomicU64; 3]| {
            Use::ALL
                .iter()
                .map(|u| {
                    (
                        vec![("use", u.label().to_owned())],
                        c[u.slot()].load(Relaxed),
                    )
                })
                .collect::<Vec<_>>()
        };
        counter_family(
            e,
            "kapsule_memory_waits",
            "Charges that had to wait for the memory budget.",
            per(&self.waits),
        )?;
        counter_family(
            e,
            "kapsule_memory_refusals",
            "Charges refused (budget busy past memory_wait_ms, or larger than the whole budget).",
            per(&self.refusals),
        )
    }
}

/// One connection's unwritten responses: a local allowance of
/// `memory_response_bytes_per_connection` on top of the global budget.
#[derive(Debug)]
pub struct ResponseGate {
    budget: Arc<MemoryBudget>,
    local: Arc<Semaphore>,
    local_units: usize,
}

/// A response's bytes, held until it is written to the client.
#[derive(Debug)]
pub struct ResponseCharge {
    _local: Option<OwnedSemaphorePermit>,
    _global: Charge,
}

impl ResponseGate {
    /// Waits until the connection may hold a response of `bytes` more: its allowance has room
    /// (a response larger than the allowance needs all of it, so it is admitted alone), then
    /// the global budget. Fails when the global budget refuses.
    pub async fn admit(&self, bytes: usize) -> Result<ResponseCharge, BudgetRefusal> {
        let local = units(bytes).min(self.local_units) as u32;
        let local = self
            .local
            .clone()
            .acquire_many_owned(local)
            .await
            .expect("the gate's semaphore is never closed");
        let global = self.budget.charge(bytes, Use::Response).await?;
        Ok(ResponseCharge {
            _local: Some(local),
            _global: global,
        })
    }

    /// A charge for a response the proxy fetched ahead of its client and holds until the
    /// client asks for it: taken from the global budget only if it is free now, and not from
    /// the connection's allowance — a held response must never stop the proxy reading the very
    /// request that would claim it.
    pub fn try_admit_held(&self, bytes: usize) -> Option<ResponseCharge> {
        Some(ResponseCharge {
            _local: None,
            _global: self.budget.try_charge(bytes)?,
        })
    }

    /// Returns once the connection's allowance is not used up: while its client does not read
    /// what it was sent, the proxy reads no more of its requests.
    pub async fn room(&self) {
        if self.local.available_permits() > 0 {
            return;
        }
        let _ = self.local.acquire().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_are_given_back_on_drop() {
        let b = MemoryBudget::new(1024 * 1024, Duration::from_millis(10), 64 * 1024);
        let c = b.charge(600 * 1024, Use::Response).await.unwrap();
        assert_eq!(b.in_use(), 600 * 1024);
        assert_eq!(c.bytes(), 600 * 1024);
        drop(c);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_busy_budget_refuses_after_the_wait_and_counts_it() {
        let b = MemoryBudget::new(1024 * 1024, Duration::from_millis(20), 64 * 1024);
        let _held = b.charge(800 * 1024, Use::Response).await.unwrap();
        let err = b
            .charge(300 * 1024, Use::ProduceDecompression)
            .await
            .unwrap_err();
        assert!(matches!(err, BudgetRefusal::Busy { .. }), "{err}");
        assert_eq!(b.waits[Use::ProduceDecompression.slot()].load(Relaxed), 1);
        assert_eq!(
            b.refusals[Use::ProduceDecompression.slot()].load(Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_waiter_gets_the_bytes_once_given_back() {
        let b = Arc::new(MemoryBudget::new(
            1024 * 1024,
            Duration::from_secs(5),
            64 * 1024,
        ));
        let held = b.charge(800 * 1024, Use::Response).await.unwrap();
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.charge(300 * 1024, Use::FetchDecompression).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_never_fits_and_does_not_wait() {
        let b = MemoryBudget::new(1024 * 1024, Duration::from_secs(60), 64 * 1024);
        let err = b
            .charge(2 * 1024 * 1024, Use::FetchDecompression)
            .await
            .unwrap_err();
        assert!(matches!(err, BudgetRefusal::NeverFits { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_connection_holds_one_large_response_at_a_time() {
        let b = Arc::new(MemoryBudget::new(
            64 * 1024 * 1024,
            Duration::from_secs(5),
            1024 * 1024,
        ));
        let gate = b.response_gate();
        let first = gate.admit(16 * 1024 * 1024).await.unwrap();
        // The allowance is used up: requests are not read, a second response waits.
        let blocked = tokio::time::timeout(Duration::from_millis(30), gate.room()).await;
        assert!(
            blocked.is_err(),
            "room() must wait while a response is unwritten"
        );
        let second = tokio::time::timeout(Duration::from_millis(30), gate.admit(100)).await;
        assert!(second.is_err(), "a second response must wait");
        drop(first);
        gate.room().await;
        let _small = gate.admit(100).await.unwrap();
        let _another = gate.admit(100).await.unwrap();
        assert_eq!(b.in_use(), 2 * 1024);
    }
}
