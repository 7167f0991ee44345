//! Parsing and validation of the `policy:` section.

use super::*;

fn parse(yaml: &str) -> Result<PolicyConfig, String> {
    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(yaml)).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// The problems `validate` reports for `c`, one a line.
fn problems(c: &PolicyConfig) -> String {
    let mut problems = Vec::new();
    c.validate("policy", &mut problems);
    problems.join("\n")
}

/// Asserts that `all` (from [`problems`]) names every one of `needles`.
fn assert_reports_each(all: &str, needles: &[&str]) {
    for needle in needles {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn parses_the_documented_example() {
    let c = parse(
        r#"
unmatched_topics: reject
rules:
  - topics: "orders*"
    key_id: "kek-${topic}"
    value: whole
    record_key: true
    headers: [pii]
  - topics: {prefix: "pay."}
    key_id: "kek-pay"
    value: {json_fields: ["/card/number", "/email"]}
    on_decrypt_failure: ciphertext
    require_encrypted: true
limits: {memory_mib: 32, call_timeout_ms: 20}
"#,
    )
    .unwrap();
    assert_eq!(c.unmatched_topics, UnmatchedTopics::Reject);
    assert_eq!(c.rules.len(), 2);
    assert_eq!(
        c.rules[1].value,
        ValuePartConfig::JsonFields(vec!["/card/number".into(), "/email".into()])
    );
    assert_eq!(c.rules[1].on_decrypt_failure, DecryptFailure::Ciphertext);
    assert_eq!(c.limits.memory_mib, 32);
    assert_eq!(c.limits.stack_kib, 512);
    let all = problems(&c);
    assert!(all.is_empty(), "{all}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = parse("rules: [{topics: a, key_id: k, colour: red}]").unwrap_err();
    assert!(e.contains("rules[0]") && e.contains("colour"), "{e}");
    let e = parse("rules: [{topics: a, key_id: k, value: {json_field: []}}]").unwrap_err();
    assert!(e.contains("json_field"), "{e}");
    let e = parse("rules: [{topics: {regex: a}, key_id: k}]").unwrap_err();
    assert!(e.contains("regex"), "{e}");
}

/// The settings rules and bindings share are plain keys of each entry: a wrong key is reported
/// with the keys the entry accepts, a wrong type with the key's own path (serde's `flatten`
/// would report neither).
#[test]
fn shared_entry_settings_keep_their_error_paths() {
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "rules: [{topics: a, key_id: k, module: m.wasm}]",
            "rules[0].module: ",
            &[
                "unknown field `module`",
                "`require_encrypted`",
                "`reveal_to`",
            ],
        ),
        (
            "bindings: [{topics: a, module: m.wasm, key_id: k}]",
            "bindings[0].key_id: ",
            &[
                "unknown field `key_id`",
                "`accept_pre_encrypted`",
                "`allowed_key_ids`",
            ],
        ),
        (
            "bindings: [{topics: a, module: m.wasm, require_encrypted: maybe}]",
            "bindings[0].require_encrypted: ",
            &["expected a boolean"],
        ),
    ];
    for (yaml, path, mentions) in cases {
        let e = parse(yaml).unwrap_err();
        assert!(e.starts_with(path), "{e}");
        assert!(mentions.iter().all(|m| e.contains(m)), "{e}");
    }
    let c = parse(
        "bindings: [{topics: a, module: m.wasm, on_decrypt_failure: ciphertext, accept_pre_encrypted: true}]",
    )
    .unwrap();
    let d = c.bindings[0].decrypt_settings();
    assert_eq!(d.on_decrypt_failure, DecryptFailure::Ciphertext);
    assert!(d.accept_pre_encrypted && !d.require_encrypted && d.covered);
}

#[test]
fn validate_reports_every_problem() {
    let c = parse(
        r#"
rules:
  - topics: "orders["
    key_id: "kek-${tenant}"
    value: {json_fields: ["email", "/ok", "/bad~2"]}
    headers: [""]
bindings:
  - topics: "x.*"
    module: /nonexistent/policy.wasm
    allowed_key_ids: ["a[", ""]
limits: {memory_mib: 0, max_instances: 0, answer_cache_kib: 32, answer_cache_entry_max_kib: 64}
"#,
    )
    .unwrap();
    let all = problems(&c);
    assert_reports_each(
        &all,
        &[
            "policy.rules[0].topics",
            "policy.rules[0].key_id: unknown placeholder `${tenant}`",
            "policy.rules[0].value.json_fields[0]",
            "policy.rules[0].value.json_fields[2]",
            "policy.rules[0].headers[0]",
            "policy.bindings[0].module",
            "policy.bindings[0].allowed_key_ids[0]: invalid glob",
            "policy.bindings[0].allowed_key_ids[1]: key id is empty",
            "policy.limits.memory_mib",
            "policy.limits.max_instances",
            "policy.limits.answer_cache_kib: 32 is outside 64..=1048576",
            "policy.limits.answer_cache_entry_max_kib: 64 is outside 1..=answer_cache_kib (32)",
        ],
    );
    assert!(!all.contains("json_fields[1]"), "{all}");
}

#[test]
fn reveal_to_problems_are_all_reported() {
    let c = parse(
        r#"
rules:
  - topics: a
    key_id: k
    reveal_to:
      - {principal: "", reveal: all}
      - {principal: "x[", mechanism: kerberos, reveal: {}}
      - {principal: y, reveal: {value: true, json_fields: ["bad"], headers: [""]}}
  - topics: b
    key_id: k
    reveal_default: {json_fields: [/ok]}
"#,
    )
    .unwrap();
    let all = problems(&c);
    assert_reports_each(
        &all,
        &[
            "policy.rules[0].reveal_default: required with reveal_to",
            "policy.rules[0].reveal_to[0].principal: empty",
            "policy.rules[0].reveal_to[1].principal: invalid glob",
            "policy.rules[0].reveal_to[1].mechanism: unknown `kerberos`",
            "policy.rules[0].reveal_to[1].reveal: reveals no part",
            "policy.rules[0].reveal_to[2].reveal.json_fields: `value: true` already",
            "policy.rules[0].reveal_to[2].reveal.json_fields[0]",
            "policy.rules[0].reveal_to[2].reveal.headers[0]",
        ],
    );
    assert!(!all.contains("rules[1]"), "{all}");
    let e = parse("rules: [{topics: a, key_id: k, reveal_default: everything}]").unwrap_err();
    assert!(
        e.contains("reveal_default") && e.contains("ciphertext"),
        "{e}"
    );
    let e = parse("rules: [{topics: a, key_id: k, reveal_default: {values: true}}]").unwrap_err();
    assert!(e.contains("values"), "{e}");
}
