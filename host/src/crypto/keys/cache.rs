//! LRU + TTL caches whose misses are fetched once per key, however many callers wait.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::kms::{KmsError, KmsErrorKind};

pub(super) type SharedResult<V> = Shared<BoxFuture<'static, Result<V, KmsError>>>;

pub(super) struct CacheInner<K: Hash + Eq, V> {
    pub(super) lru: LruCache<K, (V, Instant)>,
    pub(super) inflight: HashMap<K, SharedResult<V>>,
}

/// LRU + TTL cache whose misses are fetched once per key, however many callers wait.
pub(super) struct CoalescingCache<K: Hash + Eq, V> {
    pub(super) inner: Arc<Mutex<CacheInner<K, V>>>,
}

impl<K, V> CoalescingCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CacheInner {
                lru: LruCache::new(NonZeroUsize::new(cap.max(1)).expect("non-zero")),
                inflight: HashMap::new(),
            })),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.inner.lock().lru.len()
    }

    /// Returns the cached value (and `true`), or fetches it once for all concurrent callers.
    pub(super) async fn get(
        &self,
        key: K,
        ttl: Duration,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<V, KmsError>>,
    ) -> (Result<V, KmsError>, bool) {
        let fut = {
            let mut inner = self.inner.lock();
            match inner.lru.get(&key) {
                Some((v, exp)) if *exp > Instant::now() => return (Ok(v.clone()), true),
                Some(_) => {
                    inner.lru.pop(&key);
                }
                None => {}
            }
            if let Some(f) = inner.inflight.get(&key) {
                f.clone()
            } else {
                let inner_arc = self.inner.clone();
                let key2 = key.clone();
                let fetch = fetch();
                let f = spawn_shared(async move {
                    let r = fetch.await;
                    let mut inner = inner_arc.lock();
                    inner.inflight.remove(&key2);
                    if let Ok(v) = &r {
                        inner.lru.put(key2, (v.clone(), Instant::now() + ttl));
                    }
                    r
                });
                inner.inflight.insert(key, f.clone());
                f
            }
        };
        (fut.await, false)
    }
}

/// Runs KMS work `work` as its own task, under the deadline of the request that starts it (see
/// [`crate::kms::deadline`]), and returns a future every waiter can share. A waiter that is
/// cancelled does not cancel the call the others wait for; a task that panics is reported as a
/// KMS failure of kind `Other`.
pub(super) fn spawn_shared<V>(
    work: impl std::future::Future<Output = Result<V, KmsError>> + Send + 'static,
) -> SharedResult<V>
where
    V: Clone + Send + Sync + 'static,
{
    let task = tokio::spawn(crate::kms::requester::inherit(
        crate::kms::deadline::inherit(work),
    ));
    async move {
        task.await.unwrap_or_else(|e| {
            Err(KmsError::new(
                KmsErrorKind::Other,
                "",
                format!("KMS task failed: {e}"),
            ))
        })
    }
    .boxed()
    .shared()
}
