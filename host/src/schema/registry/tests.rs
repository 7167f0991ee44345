use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A registry that accepts connections and never answers, counting the connections.
fn silent_registry() -> (SchemaRegistry, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let registry = SchemaRegistry::new(&SchemaRegistryConfig {
        url: format!("http://127.0.0.1:{port}"),
        username: None,
        password_env: None,
        token_env: None,
        ca_cert: None,
        timeout_ms: 200,
        cache_bytes: 1 << 20,
    })
    .unwrap();
    (registry, accepted)
}

/// A registry that times out is asked once per id per `FAILURE_MEMORY`: meanwhile the same id
/// fails at once with the same retriable error (no second wait), another id is fetched, and
/// once the memory has passed the id is fetched again.
#[tokio::test]
async fn a_failed_fetch_is_remembered_briefly_then_retried() {
    let (registry, accepted) = silent_registry();
    let started = Instant::now();
    let first = registry.schema(7).await.unwrap_err();
    assert!(first.is_retriable(), "{first}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    let asked = accepted.load(Ordering::SeqCst);
    assert!(asked >= 1);

    let again = Instant::now();
    let second = registry.schema(7).await.unwrap_err();
    assert!(
        again.elapsed() < Duration::from_millis(100),
        "{:?}",
        again.elapsed()
    );
    assert_eq!(second.to_string(), first.to_string());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        asked,
        "the registry was asked again"
    );

    registry.schema(8).await.unwrap_err();
    let after_other = accepted.load(Ordering::SeqCst);
    assert!(after_other > asked, "another id must be fetched");

    tokio::time::sleep(FAILURE_MEMORY).await;
    registry.schema(7).await.unwrap_err();
    assert!(
        accepted.load(Ordering::SeqCst) > after_other,
        "not fetched again after the memory"
    );
}
