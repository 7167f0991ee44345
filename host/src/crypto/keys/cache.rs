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
                // The fetch runs under the deadline of the request that started it.
                let task = tokio::spawn({
                    let inner_arc = self.inner.clone();
                    let key = key.clone();
                    let fetch = fetch();
                    crate::kms::deadline::inherit(async move {
                        let r = fetch.await;
                        let mut inner = inner_arc.lock();
                        inner.inflight.remove(&key);
                        if let Ok(v) = &r {
                            inner.lru.put(key, (v.clone(), Instant::now() + ttl));
                        }
                        r
                    })
                });
                let f = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(KmsError::new(
                            KmsErrorKind::Other,
                            "",
                            format!("KMS task failed: {e}"),
                        ))
                    })
                }
                .boxed()
                .shared();
                inner.inflight.insert(key, f.clone());
                f
            }
        };
        (fut.await, false)
    }
}
