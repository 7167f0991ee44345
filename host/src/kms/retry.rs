//! Timeouts and retries of one KMS call under the Kafka request's deadline, shared by every
//! remote back end (Vault / OpenBao, AWS KMS, Azure Key Vault, Google Cloud KMS).
//!
//! Contract of [`call_with_retries`]: every attempt gets `timeout`, cut to the time left before
//! the request deadline ([`super::deadline::current`]); a failed attempt the back end marks
//! retriable is retried up to `retries` times with jittered exponential backoff (100 ms doubling,
//! capped at 2 s, see [`super::backoff_delay`]) unless the backoff would end after the deadline.
//! The error returned is final: its message says how many attempts were made and why no further
//! one was.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{backoff_delay, KmsError, KmsErrorKind};

/// How long one attempt may take and how often a retriable failure is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Timeout of one attempt (before the deadline cut).
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
}

/// Default `timeout_ms` of every remote back end's configuration.
pub(crate) fn default_timeout_ms() -> u64 {
    5_000
}

/// Default `retries` of every remote back end's configuration.
pub(crate) fn default_retries() -> u32 {
    3
}

impl RetryPolicy {
    /// The policy of a back end's `timeout_ms` and `retries` (checked by [`validate_policy`]).
    pub(crate) fn from_config(timeout_ms: u64, retries: u32) -> Self {
        Self {
            timeout: Duration::from_millis(timeout_ms),
            retries,
        }
    }
}

/// Appends the problems of a back end's `timeout_ms` (100..=300000) and `retries` (at most 10)
/// to `problems`, naming them under `path`.
pub(crate) fn validate_policy(
    path: &str,
    timeout_ms: u64,
    retries: u32,
    problems: &mut Vec<String>,
) {
    if !(100..=300_000).contains(&timeout_ms) {
        problems.push(format!(
            "{path}.timeout_ms: {timeout_ms} is outside 100..=300000"
        ));
    }
    if retries > 10 {
        problems.push(format!("{path}.retries: {retries} is more than 10"));
    }
}

/// Fails with every problem `validate` appends, as `invalid <backend> configuration: a; b`
/// (what the constructors of the remote back ends check before anything else).
pub(crate) fn ensure_valid(
    backend: &str,
    validate: impl FnOnce(&mut Vec<String>),
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    validate(&mut problems);
    anyhow::ensure!(
        problems.is_empty(),
        "invalid {backend} configuration: {}",
        problems.join("; ")
    );
    Ok(())
}

/// One failed attempt, classified by the back end.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Failure class reported to the caller if this is the last attempt.
    pub kind: KmsErrorKind,
    /// Operator-facing detail (never key material or credentials).
    pub message: String,
    /// True when another attempt may succeed (throttling, 5xx, connection errors); false for
    /// answers that will not change within a request (disabled key, refusal, bad ciphertext).
    pub retry: bool,
    /// HTTP status of the KMS's answer, when there was one.
    pub status: Option<u16>,
}

/// Runs `attempt` under `policy` and the request deadline (see the module docs). `op` and
/// `key_id` name the call in messages; `hint` appends what to do about a final failure of a class.
pub(crate) async fn call_with_retries<T, F, Fut>(
    op: &str,
    key_id: &str,
    policy: RetryPolicy,
    hint: impl Fn(KmsErrorKind) -> String,
    mut attempt: F,
) -> Result<T, KmsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let deadline = super::deadline::current();
    let mut made = 0u32;
    loop {
        // Never wait past the deadline of the Kafka request this call works for.
        let timeout = match deadline {
            Some(d) => policy
                .timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => policy.timeout,
        };
        if timeout.is_zero() {
            return Err(KmsError::new(
                KmsErrorKind::Transient,
                key_id,
                format!(
                    "{op}: the Kafka request's timeout passed before the KMS answered ({made} attempts)"
                ),
            ));
        }
        made += 1;
        let failure = match tokio::time::timeout(timeout, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(f)) => f,
            Err(_) => Failure {
                kind: KmsErrorKind::Transient,
                message: format!("no answer within {} ms", timeout.as_millis()),
                retry: true,
                status: None,
            },
        };
        if failure.retry && made <= policy.retries {
            let delay = backoff_delay(made - 1, Duration::from_millis(100), Duration::from_secs(2));
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return Err(KmsError::new(
                    failure.kind,
                    key_id,
                    format!(
                        "{op}: {} (after {made} attempts; no time left for another before the Kafka request's timeout)",
                        failure.message
                    ),
                ));
            }
            tracing::debug!(op, key_id, attempt = made, ?delay, error = %failure.message, "KMS call failed, retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        return Err(KmsError::new(
            failure.kind,
            key_id,
            format!(
                "{op}: {} (after {made} attempts){}",
                failure.message,
                hint(failure.kind)
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_millis(300),
            retries,
        }
    }

    #[tokio::test]
    async fn retriable_failures_are_retried_then_reported_with_the_count() {
        let calls = &AtomicU32::new(0);
        let err = call_with_retries(
            "op",
            "k",
            policy(2),
            |_| " (hint)".into(),
            || async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Failure {
                    kind: KmsErrorKind::Transient,
                    message: "throttled".into(),
                    retry: true,
                    status: None,
                })
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(err.kind, KmsErrorKind::Transient);
        assert!(err.message.contains("after 3 attempts"), "{err:?}");
        assert!(err.message.ends_with("(hint)"), "{err:?}");
    }

    #[tokio::test]
    async fn final_answers_are_not_retried_and_success_after_a_retry_counts() {
        let calls = &AtomicU32::new(0);
        let err = call_with_retries(
            "op",
            "k",
            policy(5),
            |_| String::new(),
            || async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Failure {
                    kind: KmsErrorKind::Transient,
                    message: "key disabled".into(),
                    retry: false,
                    status: None,
                })
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "{err:?}");
        let calls = &AtomicU32::new(0);
        let v = call_with_retries(
            "op",
            "k",
            policy(5),
            |_| String::new(),
            || async move {
                match calls.fetch_add(1, Ordering::Relaxed) {
                    0 => Err(Failure {
                        kind: KmsErrorKind::Transient,
                        message: "503".into(),
                        retry: true,
                        status: None,
                    }),
                    _ => Ok(7),
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 7);
    }

    #[tokio::test]
    async fn the_request_deadline_cuts_timeouts_and_retries() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(500);
        let err = super::super::deadline::scope(
            Some(deadline),
            call_with_retries(
                "op",
                "k",
                RetryPolicy {
                    timeout: Duration::from_secs(2),
                    retries: 10,
                },
                |_| String::new(),
                std::future::pending::<Result<(), Failure>>,
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::Transient);
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "11 attempts of 2 s were not cut to the 500 ms deadline: {:?} ({err:?})",
            start.elapsed()
        );
    }
}
