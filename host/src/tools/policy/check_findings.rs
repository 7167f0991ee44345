//! What `kapsule policy check` finds wrong in answers that production would accept: memo answers
//! that differ from the module's own decisions, and exceptions the Python and JavaScript SDKs
//! turned into refusals. Both fail the check.

use crate::kafka::records::Record;
use crate::plan::{MemoKey, RecordDecision};

/// The SDK's report of an exception in the policy's own code, when `message` is one: the Python
/// SDK refuses with `policy decide() raised AttributeError`, the JavaScript SDK with
/// `policy decide() threw TypeError` (`plan()` and `reveal()` likewise). Returns the part after
/// `policy ` (`decide() raised AttributeError`).
pub(super) fn sdk_exception(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("policy ")?;
    let (call, outcome) = rest.split_once("() ")?;
    let (verb, error_type) = outcome.split_once(' ')?;
    let known_call = matches!(call, "plan" | "decide" | "reveal");
    let raised = matches!(verb, "raised" | "threw");
    let one_word = !error_type.is_empty() && !error_type.contains(char::is_whitespace);
    (known_call && raised && one_word).then_some(rest)
}

/// The guest's own report of the exception behind refusal `message`: the first captured trace
/// message whose first line is `message` (the SDKs send the traceback that way), if any.
pub(super) fn traceback_for<'t>(message: &str, traces: &'t [String]) -> Option<&'t str> {
    traces
        .iter()
        .find(|t| t.lines().next() == Some(message))
        .map(|t| t.split_once('\n').map_or("", |(_, rest)| rest))
}

/// A failure line for an exception the SDK turned into `message` on `what` (a topic's plan, a
/// record, a fetch), with the guest's traceback indented below it when the toolchain gave one.
pub(super) fn exception_failure(what: &str, message: &str, traces: &[String]) -> String {
    let mut out = format!(
        "{what}: the policy's code failed ({}); production refuses what it decides",
        sdk_exception(message).unwrap_or(message)
    );
    match traceback_for(message, traces) {
        Some(tb) if !tb.trim().is_empty() => {
            for line in tb.lines() {
                out.push_str("\n      ");
                out.push_str(line);
            }
        }
        _ => out.push_str(
            "\n      (no traceback: rebuild the module with the current SDK to see the message \
             and traceback here)",
        ),
    }
    out
}

/// The value record `r` has under memo key `key`, for the author's eyes (`policy check` shows
/// its own sample records only).
pub(super) fn memo_value(r: &Record, key: &MemoKey) -> String {
    let show = |b: Option<&[u8]>| match b {
        None => "null".to_string(),
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
    };
    let header = |name: &str| match r.headers.iter().find(|h| h.key == name.as_bytes()) {
        None => "absent".into(),
        Some(h) => show(h.value.as_deref()),
    };
    match key {
        MemoKey::None => "-".into(),
        MemoKey::Header(name) => header(name),
        MemoKey::Headers(names) => names
            .iter()
            .map(|n| format!("{n}={}", header(n)))
            .collect::<Vec<_>>()
            .join(", "),
        MemoKey::RecordKey => show(r.key.as_deref()),
        MemoKey::KeyPrefix(n) => show(r.key.as_deref().map(|k| &k[..k.len().min(*n as usize)])),
    }
}

/// One failure per sample whose memoized decision (`memoized[i]`) differs from the decision the
/// module gives when shown the record itself (`own[i]`), naming the record and the memo key.
pub(super) fn memo_mismatches(
    topic: &str,
    key: &MemoKey,
    samples: &[Record],
    memoized: &[RecordDecision],
    own: &[RecordDecision],
    describe_record: impl Fn(&Record) -> String,
    describe_decision: impl Fn(&RecordDecision) -> String,
) -> Vec<String> {
    samples
        .iter()
        .zip(memoized.iter().zip(own))
        .enumerate()
        .filter(|(_, (_, (m, o)))| m != o)
        .map(|(i, (r, (m, o)))| {
            format!(
                "topic {topic}: record {i} {}: the memo key ({key}, value {}) answers `{}` from \
                 an earlier record with that value, but decide gives `{}` for this record: \
                 decide reads more than its memo key declares. Declare a memo key that covers \
                 everything decide reads, or no memo (docs/policies/cookbook.md, \"Tenant keys \
                 with an exception\")",
                describe_record(r),
                memo_value(r, key),
                describe_decision(m),
                describe_decision(o),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{check_policy, CheckOptions};
    use super::*;

    /// The cookbook's tenant policy with a `classification: public` exception and the memo left
    /// on `tenant` (the built-in samples hold public and internal records of one tenant): the
    /// check decides every sample again without the memo and fails, naming the record and key.
    #[test]
    fn policy_check_fails_when_the_memo_decides_for_records_it_must_not() {
        let a = kapsule_test_fixtures::policy_artifacts().unwrap();
        let opts = CheckOptions {
            config: "tenant-memo-public-passes".into(),
            topics: vec!["events".into()],
            ..CheckOptions::default()
        };
        let r = check_policy(&a.path("hostile-misbehave"), &opts).unwrap();
        assert!(!r.passed(), "{}", r.text);
        let f = r.failures.join("\n");
        assert!(
            f.contains("record 1 (key \"o-2\"")
                && f.contains("memo key (header `tenant`, value \"acme\")")
                && f.contains("answers `encrypt with key `kek-acme`")
                && f.contains("decide gives `pass` for this record"),
            "{f}"
        );
        assert!(r.text.contains("MEMO MISMATCH"), "{}", r.text);
        // The same policy with the memo keeping its promise passes (tenant-keys: memo on the
        // only header it reads).
        let opts = CheckOptions {
            topics: vec!["events".into()],
            ..CheckOptions::default()
        };
        let r = check_policy(&a.path("tenant-keys"), &opts).unwrap();
        assert!(r.passed(), "{}\n{:?}", r.text, r.failures);
    }

    #[test]
    fn sdk_exception_reports_are_recognized_and_nothing_else() {
        assert_eq!(
            sdk_exception("policy decide() raised AttributeError"),
            Some("decide() raised AttributeError")
        );
        assert_eq!(
            sdk_exception("policy plan() threw TypeError"),
            Some("plan() threw TypeError")
        );
        assert_eq!(sdk_exception("record has no valid `tenant` header"), None);
        assert_eq!(sdk_exception("policy decide() raised my own words"), None);
        assert_eq!(sdk_exception("policy other() raised X"), None);
    }

    #[test]
    fn the_traceback_is_the_trace_whose_first_line_is_the_refusal() {
        let traces = vec![
            "something else".to_string(),
            "policy decide() raised KeyError\nTraceback (most recent call last):\n  File \"app.py\", line 3\nKeyError: 'tenant'".to_string(),
        ];
        let f = exception_failure("record 0", "policy decide() raised KeyError", &traces);
        assert!(
            f.contains("decide() raised KeyError") && f.contains("      KeyError: 'tenant'"),
            "{f}"
        );
        let f = exception_failure("record 0", "policy plan() raised KeyError", &traces);
        assert!(f.contains("no traceback"), "{f}");
    }
}
