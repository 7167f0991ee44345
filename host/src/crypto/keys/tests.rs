//! Unit tests of the DEK lifecycle.

use super::*;
use std::sync::atomic::AtomicU64;

use crate::kms::memory::MemoryKms;

fn mgr(kms: Arc<MemoryKms>, cfg: DekConfig) -> DekManager {
    DekManager::new(kms, cfg, Arc::new(CryptoMetrics::default()))
}

#[tokio::test]
async fn rotation_by_count_and_bytes_with_unique_nonces() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let cfg = DekConfig {
        max_encryptions: 10,
        max_bytes: 1000,
        refresh_ahead_fraction: 1.0,
        ..Default::default()
    };
    let m = mgr(kms.clone(), cfg);
    let mut seen = std::collections::HashSet::new();
    let first = m.reserve("k", "t", 4, 10).await.unwrap();
    seen.insert((first.dek.edek.clone(), first.nonce_base));
    let second = m.reserve("k", "t", 6, 10).await.unwrap();
    assert!(Arc::ptr_eq(&first.dek, &second.dek));
    assert_eq!(
        u64::from_be_bytes(second.nonce_base[4..].try_into().unwrap()),
        4
    );
    assert_eq!(second.nonce_base[..4], first.nonce_base[..4]);
    // Count limit reached: next reservation gets a new DEK.
    let third = m.reserve("k", "t", 1, 10).await.unwrap();
    assert!(!Arc::ptr_eq(&first.dek, &third.dek));
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 2);
    assert_eq!(m.metrics.rotations_count.load(Ordering::Relaxed), 1);
    // Bytes: 990 more bytes fit (10 used), one more does not.
    let fourth = m.reserve("k", "t", 1, 990).await.unwrap();
    assert!(Arc::ptr_eq(&third.dek, &fourth.dek));
    let fifth = m.reserve("k", "t", 1, 1).await.unwrap();
    assert!(!Arc::ptr_eq(&third.dek, &fifth.dek));
    assert_eq!(m.metrics.rotations_bytes.load(Ordering::Relaxed), 1);
    // Oversized record on a fresh key is accepted rather than looping forever.
    let _ = m.reserve("k", "big", 1, 10_000).await.unwrap();
    // Different topics get different DEKs.
    let other = m.reserve("k", "t2", 1, 1).await.unwrap();
    assert!(!Arc::ptr_eq(&other.dek, &fifth.dek));
}

#[tokio::test(start_paused = true)]
async fn rotation_by_age_with_refresh_ahead() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let cfg = DekConfig {
        max_age_secs: 100,
        refresh_ahead_fraction: 0.5,
        ..Default::default()
    };
    let m = mgr(kms.clone(), cfg);
    let a = m.reserve("k", "t", 1, 1).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    // Past 50%: still the same DEK, but its successor is fetched in the background.
    let b = m.reserve("k", "t", 1, 1).await.unwrap();
    assert!(Arc::ptr_eq(&a.dek, &b.dek));
    tokio::task::yield_now().await;
    for _ in 0..10 {
        if kms.generate_calls.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 2);
    // Make the KMS fail: the expired DEK is replaced by the prefetched one without a call.
    kms.fail_with(Some(KmsErrorKind::Transient));
    tokio::time::advance(Duration::from_secs(41)).await;
    let c = m.reserve("k", "t", 1, 1).await.unwrap();
    assert!(!Arc::ptr_eq(&a.dek, &c.dek));
    assert_eq!(m.metrics.rotations_age.load(Ordering::Relaxed), 1);
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn kms_failure_surfaces_with_its_class() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let m = mgr(kms.clone(), DekConfig::default());
    let e = m.reserve("missing", "t", 1, 1).await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey);
    kms.fail_with(Some(KmsErrorKind::Transient));
    let e = m.reserve("k", "t", 1, 1).await.unwrap_err();
    assert!(e.is_retriable());
    kms.fail_with(None);
    m.reserve("k", "t", 1, 1).await.unwrap();
    assert_eq!(m.kms_metrics().call_count("generate", "transient"), 1);
    assert_eq!(m.kms_metrics().call_count("generate", "ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_coalesce() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    kms.set_delay(Duration::from_millis(50));
    let m = Arc::new(mgr(kms.clone(), DekConfig::default()));
    // Generation.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.reserve("k", "t", 1, 1).await.unwrap() })
        })
        .collect();
    let mut nonces = std::collections::HashSet::new();
    for t in tasks {
        assert!(nonces.insert(t.await.unwrap().nonce_base));
    }
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 1);
    // Decryption of one EDEK by a fresh manager.
    let edek = m.reserve("k", "t", 1, 1).await.unwrap().dek.edek.to_vec();
    let fresh = Arc::new(mgr(kms.clone(), DekConfig::default()));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (m, e) = (fresh.clone(), edek.clone());
            tokio::spawn(async move { m.decrypt("k", &e).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(kms.decrypt_calls.load(Ordering::SeqCst), 1);
    // Derivation.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = fresh.clone();
            tokio::spawn(async move { m.record_key_cipher("k", "t", None).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(kms.derive_calls.load(Ordering::SeqCst), 1);
    // Failures are shared too, and not cached.
    kms.fail_with(Some(KmsErrorKind::Transient));
    let e2 = vec![0u8; 64];
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (m, e) = (fresh.clone(), e2.clone());
            tokio::spawn(async move { m.decrypt("k", &e).await.unwrap_err() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_retriable());
    }
    assert_eq!(kms.decrypt_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn decrypted_cache_lru_and_ttl() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let producer = mgr(
        kms.clone(),
        DekConfig {
            max_encryptions: 1,
            ..Default::default()
        },
    );
    let mut edeks = Vec::new();
    for _ in 0..3 {
        edeks.push(
            producer
                .reserve("k", "t", 1, 1)
                .await
                .unwrap()
                .dek
                .edek
                .to_vec(),
        );
    }
    let m = mgr(
        kms.clone(),
        DekConfig {
            decrypted_cache_size: 2,
            decrypted_cache_ttl_secs: 10,
            ..Default::default()
        },
    );
    let calls = || kms.decrypt_calls.load(Ordering::SeqCst);
    m.decrypt("k", &edeks[0]).await.unwrap();
    m.decrypt("k", &edeks[1]).await.unwrap();
    m.decrypt("k", &edeks[0]).await.unwrap(); // hit, 0 most recent
    assert_eq!(calls(), 2);
    m.decrypt("k", &edeks[2]).await.unwrap(); // evicts 1 (least recent)
    assert_eq!(m.decrypted_cache_len(), 2);
    m.decrypt("k", &edeks[0]).await.unwrap(); // still cached: hit
    assert_eq!(calls(), 3);
    m.decrypt("k", &edeks[1]).await.unwrap();
    assert_eq!(calls(), 4);
    tokio::time::advance(Duration::from_secs(11)).await;
    m.decrypt("k", &edeks[1]).await.unwrap(); // expired
    assert_eq!(calls(), 5);
    assert_eq!(m.metrics.decrypt_cache_hits.load(Ordering::Relaxed), 2);
}

#[test]
fn config_defaults_and_validation() {
    let c: DekConfig = serde_norway::from_str("max_age_secs: 60\n").unwrap();
    assert_eq!(c.max_age_secs, 60);
    assert_eq!(c.max_encryptions, 100_000_000);
    let mut p = Vec::new();
    c.validate("deks", &mut p);
    assert!(p.is_empty());
    assert!(serde_norway::from_str::<DekConfig>("max_age: 1\n").is_err());
    let bad = DekConfig {
        max_age_secs: 0,
        max_encryptions: (1 << 32) + 1,
        max_bytes: 0,
        refresh_ahead_fraction: 1.5,
        decrypted_cache_size: 0,
        decrypted_cache_ttl_secs: 0,
        record_key_kek_version: Some(0),
        max_topics: 0,
        negative_cache_ttl_secs: 0,
        max_concurrent_kms_calls: 0,
    };
    bad.validate("deks", &mut p);
    assert_eq!(p.len(), 9, "{p:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_keys_are_cached_briefly() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let m = mgr(
        kms.clone(),
        DekConfig {
            negative_cache_ttl_secs: 10,
            ..Default::default()
        },
    );
    for topic in ["a", "b", "c"] {
        let e = m.reserve("missing", topic, 1, 1).await.unwrap_err();
        assert_eq!(e.kind, KmsErrorKind::UnknownKey);
    }
    let e = m.record_key_cipher("missing", "a", None).await.unwrap_err();
    assert_eq!(e.kind, KmsErrorKind::UnknownKey);
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 1);
    assert_eq!(kms.derive_calls.load(Ordering::SeqCst), 0);
    // Known keys are unaffected, and the refusal expires.
    m.reserve("k", "a", 1, 1).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    m.reserve("missing", "a", 1, 1).await.unwrap_err();
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 3);
    // Transient failures are never cached.
    kms.fail_with(Some(KmsErrorKind::Transient));
    m.reserve("k", "t1", 1, 1).await.unwrap_err();
    kms.fail_with(None);
    m.reserve("k", "t1", 1, 1).await.unwrap();
}

#[tokio::test]
async fn dek_slots_are_bounded_and_invalid_topics_create_none() {
    let kms = Arc::new(MemoryKms::with_keys(&["k"]));
    let m = mgr(
        kms.clone(),
        DekConfig {
            max_topics: 8,
            ..Default::default()
        },
    );
    for i in 0..100 {
        m.reserve("k", &format!("topic-{i}"), 1, 1).await.unwrap();
    }
    assert_eq!(m.slot_count(), 8);
    assert_eq!(
        m.metrics.topic_label_count(),
        0,
        "reserve itself adds no label"
    );
    // An evicted topic gets a fresh DEK (and so never reuses a nonce).
    let a = m.reserve("k", "topic-0", 1, 1).await.unwrap();
    let b = m.reserve("k", "topic-99", 1, 1).await.unwrap();
    assert!(!Arc::ptr_eq(&a.dek, &b.dek));
    for bad in ["", "..", "a/b", "x\u{1b}[2J", &"y".repeat(250)] {
        let e = m.reserve("k", bad, 1, 1).await.unwrap_err();
        assert!(e.message.contains("topic name"), "{e:?}");
        m.record_key_cipher("k", bad, None).await.unwrap_err();
    }
    assert_eq!(m.slot_count(), 8);
    assert_eq!(kms.generate_calls.load(Ordering::SeqCst), 101);
}

/// Counts the most calls in flight at once.
#[derive(Debug)]
struct Peak {
    inner: Arc<MemoryKms>,
    now: AtomicU64,
    peak: AtomicU64,
}

#[async_trait::async_trait]
impl Kms for Peak {
    fn backend(&self) -> &'static str {
        "peak"
    }
    async fn generate_data_key(&self, key_id: &str) -> Result<crate::kms::DataKey, KmsError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        let r = self.inner.generate_data_key(key_id).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        edek: &[u8],
    ) -> Result<crate::kms::SecretKey, KmsError> {
        self.inner.decrypt_data_key(key_id, edek).await
    }
    async fn key_info(&self, key_id: &str) -> Result<crate::kms::KeyInfo, KmsError> {
        self.inner.key_info(key_id).await
    }
    async fn derive_key(
        &self,
        request: crate::kms::DeriveRequest<'_>,
    ) -> Result<crate::kms::DerivedKey, KmsError> {
        self.inner.derive_key(request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_kms_calls_are_bounded() {
    let inner = Arc::new(MemoryKms::with_keys(&["k"]));
    inner.set_delay(Duration::from_millis(20));
    let kms = Arc::new(Peak {
        inner: inner.clone(),
        now: AtomicU64::new(0),
        peak: AtomicU64::new(0),
    });
    let m = Arc::new(DekManager::new(
        kms.clone(),
        DekConfig {
            max_concurrent_kms_calls: 3,
            ..Default::default()
        },
        Arc::new(CryptoMetrics::default()),
    ));
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move { m.reserve("k", &format!("t{i}"), 1, 1).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(inner.generate_calls.load(Ordering::SeqCst), 24);
    assert_eq!(kms.peak.load(Ordering::SeqCst), 3);
}
