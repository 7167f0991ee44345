//! The deadline of the Kafka request a KMS call works for.
//!
//! A Produce request carries `timeout_ms`: after it the client has given up and reported the
//! records failed. The proxy runs the record stage of such a request inside [`scope`], and the
//! KMS back ends consult [`current`] so retries never outlive the request: a retry that cannot
//! finish in the time left is not started. Tasks spawned on behalf of the request (the DEK
//! manager's coalesced KMS calls) carry the deadline over with [`inherit`]; a call shared by
//! several requests is bounded by the deadline of the one that started it, and the others see a
//! transient failure they may retry.
//!
//! Outside a scope (Fetch, start-up, admin calls) there is no deadline and back ends use their own
//! timeouts and retry counts only.

use std::future::Future;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `f` with `deadline` as the request deadline seen by [`current`].
pub async fn scope<F: Future>(deadline: Option<Instant>, f: F) -> F::Output {
    DEADLINE.scope(deadline, f).await
}

/// The deadline of the request being served, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// Wraps `f` (about to be spawned) so it runs under the caller's current deadline.
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    scope(current(), f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn deadline_is_visible_in_scope_and_in_inheriting_tasks_only() {
        assert_eq!(current(), None);
        let d = Instant::now() + Duration::from_secs(3);
        let (inside, spawned, plain) = scope(Some(d), async {
            let spawned = tokio::spawn(inherit(async { current() }));
            let plain = tokio::spawn(async { current() });
            (current(), spawned.await.unwrap(), plain.await.unwrap())
        })
        .await;
        assert_eq!(inside, Some(d));
        assert_eq!(spawned, Some(d));
        assert_eq!(plain, None, "a task that does not inherit has no deadline");
        assert_eq!(current(), None);
    }
}
