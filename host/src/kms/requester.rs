//! Who a KMS call works for: the principal of the Kafka connection whose request needs it.
//!
//! The proxy runs the record stage of a Produce inside [`scope`] with the connection's principal
//! (or [`ANONYMOUS`]); tasks spawned on its behalf (the DEK manager's coalesced KMS calls) carry
//! it over with [`inherit`]. Back ends that create keys on demand (the local KMS's
//! `auto_create_keys`) consult [`current`] to budget creations per principal, so one principal
//! cannot use up what the whole key file may hold. A call shared by several requests counts for
//! the one that started it.

use std::future::Future;
use std::sync::Arc;

/// The requester label of connections without a principal.
pub const ANONYMOUS: &str = "(unauthenticated)";

tokio::task_local! {
    static REQUESTER: Option<Arc<str>>;
}

/// Runs `f` with `who` as the requester seen by [`current`].
pub async fn scope<F: Future>(who: Arc<str>, f: F) -> F::Output {
    REQUESTER.scope(Some(who), f).await
}

/// The client requester of the call being made; `None` outside a scope (start-up, CLI, admin):
/// such calls are not made for a client and have no per-principal budget.
pub fn current() -> Option<Arc<str>> {
    REQUESTER.try_with(Clone::clone).ok().flatten()
}

/// Wraps `f` (about to be spawned) so it runs for the caller's current requester.
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    REQUESTER.scope(current(), f)
}

/// The requester label of a connection's principal: `<mechanism>:<name>`, or [`ANONYMOUS`].
pub fn label(principal: Option<&crate::principal::Principal>) -> Arc<str> {
    match principal {
        Some(p) => Arc::from(format!("{}:{}", p.mechanism().label(), p.name())),
        None => Arc::from(ANONYMOUS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requester_is_visible_in_scope_and_in_inheriting_tasks_only() {
        assert_eq!(current(), None);
        let (inside, spawned, plain) = scope(Arc::from("PLAIN:alice"), async {
            let spawned = tokio::spawn(inherit(async { current() }));
            let plain = tokio::spawn(async { current() });
            (current(), spawned.await.unwrap(), plain.await.unwrap())
        })
        .await;
        assert_eq!(inside.as_deref(), Some("PLAIN:alice"));
        assert_eq!(spawned.as_deref(), Some("PLAIN:alice"));
        assert_eq!(plain, None);
    }
}
