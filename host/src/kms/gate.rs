//! The one door every KMS call of the DEK manager (`crypto::keys`) goes through: a bound
//! on concurrent calls, a short negative cache, metrics and the operator log line of a failure.
//!
//! - **Concurrency.** At most `deks.max_concurrent_kms_calls` calls are in flight; the others wait
//!   their turn (coalescing in the DEK manager already merges calls for the same key).
//! - **Negative cache.** A key id the KMS answered `unknown_key` or `permission_denied` for is not
//!   asked about again for `deks.negative_cache_ttl_secs` (default 10 s; 0 disables): the cached
//!   error is returned at once. Clients choosing many topic names under a `${topic}` key template
//!   therefore cost at most one KMS call per name and period. The cache is an LRU bounded by
//!   `deks.max_topics`.
//! - **Metrics.** Outcome and latency of every call go to a [`KmsCallObserver`], which the
//!   owner of the gate supplies (the proxy's is [`super::metrics::KmsMetrics`]).
//! - **Logging.** A failed call is logged once here with the KMS's full detail (which may name
//!   the KMS address); the error handed back up, and on to Kafka clients, prints only its class
//!   and key id (see [`super::KmsError`]).

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{KmsError, KmsErrorKind};

/// Receives the outcome of every KMS call made through a [`KmsGate`].
pub trait KmsCallObserver: Send + Sync {
    /// Called once per call that reached the KMS: operation `op` (`generate`, `decrypt`,
    /// `derive`), `outcome` (`ok` or the [`KmsErrorKind::label`] of the error) and its latency.
    fn kms_call(&self, op: &'static str, outcome: &'static str, latency: Duration);
}

/// Bounds, caches and records KMS calls (see the module docs).
pub(crate) struct KmsGate {
    metrics: Arc<dyn KmsCallObserver>,
    permits: Semaphore,
    negative: Mutex<LruCache<String, (KmsError, Instant)>>,
    negative_ttl: Duration,
}

impl KmsGate {
    /// A gate reporting to `metrics` and allowing `max_concurrent` calls at once, caching refusals for `negative_ttl` in an
    /// LRU of `negative_cap` key ids.
    pub(crate) fn new(
        metrics: Arc<dyn KmsCallObserver>,
        max_concurrent: usize,
        negative_ttl: Duration,
        negative_cap: usize,
    ) -> Self {
        Self {
            metrics,
            permits: Semaphore::new(max_concurrent.max(1)),
            negative: Mutex::new(LruCache::new(
                NonZeroUsize::new(negative_cap.max(1)).expect("non-zero"),
            )),
            negative_ttl,
        }
    }

    /// The cached refusal of `key_id`, if one is still fresh.
    fn cached_refusal(&self, key_id: &str) -> Option<KmsError> {
        let mut neg = self.negative.lock();
        match neg.get(key_id) {
            Some((e, until)) if *until > Instant::now() => Some(e.clone()),
            Some(_) => {
                neg.pop(key_id);
                None
            }
            None => None,
        }
    }

    /// Runs KMS call `call` (operation `op` on `key_id`) unless a refusal of `key_id` is cached;
    /// waits for a concurrency permit first, then records outcome and latency.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        key_id: &str,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        if let Some(e) = self.cached_refusal(key_id) {
            return Err(e);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| KmsError::new(KmsErrorKind::Other, key_id, "KMS gate closed"))?;
        // Another caller may have learnt the answer while this one waited.
        if let Some(e) = self.cached_refusal(key_id) {
            return Err(e);
        }
        let start = std::time::Instant::now();
        let r = call.await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.kind.label(),
        };
        self.metrics.kms_call(op, outcome, start.elapsed());
        if let Err(e) = &r {
            tracing::warn!(
                op,
                key_id = ?key_id,
                kind = e.kind.label(),
                detail = %e.message.escape_debug(),
                "KMS call failed"
            );
            let refusal = matches!(
                e.kind,
                KmsErrorKind::UnknownKey | KmsErrorKind::PermissionDenied
            );
            if refusal && !self.negative_ttl.is_zero() {
                self.negative.lock().put(
                    key_id.to_owned(),
                    (e.clone(), Instant::now() + self.negative_ttl),
                );
            }
        }
        r
    }
}
