//! Policies in Python and JavaScript end to end, and the templates of every language.
//!
//! The example policies `policies/<example>/{python,js,c}` (tenant keys, PII fields, header gate,
//! written on `guest-sdk/python`, `guest-sdk/js` and `guest-sdk/c`; the C header gate directly on
//! the generated bindings) are built with the real toolchains
//! (componentize-py, componentize-js, wit-bindgen c + clang), checked with `kapsule policy check`,
//! bound in Kapsule, and
//! driven by a real client (confluent-kafka) on a real tansu broker: records are ciphertext at rest
//! and clear text on consume. Who may read: the pii-fields example of each language, bound in a
//! Kapsule that takes the principal from the client certificate (mTLS, `principal_from: cn`), shows
//! the PII members as ciphertext to `analytics` and everything to `app` and to anonymous readers
//! (confluent-kafka and kafka-python); for Python also with SCRAM users over SASL_SSL. Each
//! component is built by `kapsule_test_fixtures::build_guest`, and not at all when it is newer
//! than its sources, the SDK and the WIT (CI builds each example once). The templates of
//! `kapsule policy new` are tested in `templates.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kapsule_integration::encryption::{assert_no_plaintext, LocalKms};
use kapsule_integration::records::ConsumedRecord;
use kapsule_integration::sasl::{SaslTansu, SaslUser, Scram};
use kapsule_integration::tls::{ck_ssl, kp_consume_tls, KeyKind, Pki, RawKapsule};
use kapsule_integration::{kapsule::kapsule_bin, unique_name, Tansu, TestRecord};
pub(crate) use kapsule_test_fixtures::Lang;
use kapsule_test_fixtures::{build_guest, repo_root};
use serde_json::Value;

use crate::common::{assert_records_match, ck_consume, ck_produce};
use crate::encryption::{produce_report, read_direct, start_kapsule, topic};
use crate::policies::{binding, errors_of, POLICY_VIOLATION};
use crate::reveal::{mtls_principal_config, refs};

/// Generous limits while guest calls of interpreted languages share 2 cores with the whole test
/// suite (the production defaults are checked by `policy check`, not here).
pub(crate) const LIMITS: &str =
    "  limits:\n    call_timeout_ms: 5000\n    init_timeout_ms: 20000\n    memory_mib: 256\n";

/// Guest `name` in `lang` (an example of `policies/` or a test-only guest of
/// `tests/fixtures/guests`) built into a component by [`build_guest`] (once per change of its
/// sources, the SDK or the WIT).
pub(crate) async fn built(lang: Lang, name: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || build_guest(lang, name))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `kapsule policy check` with `args`; returns (success, stdout + stderr).
pub(crate) async fn policy_check(module: &Path, args: &[&str]) -> (bool, String) {
    let mut c = tokio::process::Command::new(kapsule_bin().expect("kapsule binary"));
    c.arg("policy").arg("check").arg(module).args(args);
    let out = tokio::time::timeout(Duration::from_secs(300), c.output())
        .await
        .expect("policy check finishes")
        .expect("run kapsule policy check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn with_headers(key: String, value: impl Into<Vec<u8>>, headers: &[(&str, String)]) -> TestRecord {
    let mut r = TestRecord::kv(key, value);
    r.headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.clone().into_bytes())))
        .collect();
    r
}

/// The three examples of `lang` checked, bound in one Kapsule and driven by confluent-kafka.
async fn examples_through_kapsule(lang: Lang) {
    let tenant = built(lang, "tenant-keys").await;
    let pii = built(lang, "pii-fields").await;
    let gate = built(lang, "header-gate").await;
    // The C example encrypts configured JSON pointers; the others find PII names at any depth.
    let pii_config = if lang == Lang::C {
        "fields=/customer/email,/items/0/phone"
    } else {
        ""
    };
    // Each example passes `policy check` (which also compiles it into the module cache that the
    // Kapsule started below loads from).
    for (m, config, allowed) in [
        (&tenant, "", "tenant-*"),
        (&pii, pii_config, "pii-*"),
        (&gate, "kek-", "kek-*"),
    ] {
        let (ok, out) = policy_check(
            m,
            &[
                "--config",
                config,
                "--allowed-key-id",
                allowed,
                "--call-timeout-ms",
                "5000",
            ],
        )
        .await;
        assert!(ok, "{out}");
        assert!(out.contains("decide per record batch"), "{out}");
    }
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let mut policy = format!("policy:\n  watch: false\n{LIMITS}  bindings:\n");
    policy += &binding("xtenant-", &tenant, "", &["tenant-*"]);
    policy += &binding("xpii-", &pii, pii_config, &["pii-$${topic}"]);
    policy += &binding("xgate-", &gate, "kek-", &["kek-$${topic}"]);
    let kapsule = start_kapsule(&tansu, &kms.yaml(), &policy).await;
    let b = kapsule.bootstrap();

    // Tenant keys: each record under its tenant's key; ciphertext at rest, clear on consume.
    let t = topic(&tansu, "xtenant-").await;
    let records: Vec<TestRecord> = (0..12)
        .map(|i| {
            let tenant = ["acme", "globex", "initech"][i % 3];
            with_headers(
                format!("k{i}"),
                format!("TENANTVAL-{i}"),
                &[("tenant", tenant.into())],
            )
        })
        .collect();
    ck_produce(&b, &t, &records, &[]).await;
    assert_records_match(&records, &ck_consume(&b, &t, 12, &[]).await);
    let stored = read_direct(&tansu, &t, 12).await;
    assert_no_plaintext(&stored, &[b"TENANTVAL-".to_vec()]);
    assert!(stored.iter().all(|s| s.header("kapsule.enc").is_some()));
    let out = produce_report(
        &b,
        &t,
        &[TestRecord::kv("k", "NOTENANT")],
        &["--timeout", "15"],
    )
    .await;
    let errs = errors_of(&out);
    assert_eq!(errs.len(), 1, "a record without tenant is refused: {out}");
    assert_eq!(errs[0]["code"], POLICY_VIOLATION, "{out}");

    // PII fields: only the PII members are ciphertext; the value stays JSON.
    let t = topic(&tansu, "xpii-").await;
    let records: Vec<TestRecord> = (0..10)
        .map(|i| {
            let v = serde_json::json!({"order": i, "customer": {"email": format!("PIIMAIL-{i}@x.io"), "city": "Lyon"},
                                       "items": [{"sku": "A1", "phone": format!("PIIPHONE-{i}")}]});
            TestRecord::kv(format!("o{i}"), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    ck_produce(&b, &t, &records, &[]).await;
    assert_records_match(&records, &ck_consume(&b, &t, 10, &[]).await);
    let stored = read_direct(&tansu, &t, 10).await;
    assert_no_plaintext(&stored, &[b"PIIMAIL-".to_vec(), b"PIIPHONE-".to_vec()]);
    for (i, s) in stored.iter().enumerate() {
        let v: Value =
            serde_json::from_slice(s.value.as_deref().unwrap()).expect("stored value is JSON");
        assert_eq!(v["order"], i);
        assert_eq!(v["customer"]["city"], "Lyon");
        assert_eq!(v["items"][0]["sku"], "A1");
    }

    // Header gate: public in clear, internal encrypted with its pii header, restricted refused.
    let t = topic(&tansu, "xgate-").await;
    let records: Vec<TestRecord> = (0..10)
        .map(|i| {
            let class = if i % 2 == 0 { "public" } else { "internal" };
            with_headers(
                format!("k{i}"),
                format!("GATE-{class}-{i}"),
                &[
                    ("classification", class.into()),
                    ("pii", format!("GATEPII-{i}")),
                ],
            )
        })
        .collect();
    ck_produce(&b, &t, &records, &[]).await;
    assert_records_match(&records, &ck_consume(&b, &t, 10, &[]).await);
    let stored = read_direct(&tansu, &t, 10).await;
    for (i, s) in stored.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(
                (&s.key, &s.value, &s.headers),
                (&records[i].key, &records[i].value, &records[i].headers),
                "public record {i} stored as sent"
            );
        } else {
            assert!(s.header("kapsule.enc").is_some(), "record {i} encrypted");
            assert_no_plaintext(
                std::slice::from_ref(s),
                &[b"GATE-internal".to_vec(), b"GATEPII-".to_vec()],
            );
        }
    }
    let restricted = with_headers(
        "r".into(),
        "RESTRICTED",
        &[("classification", "restricted".into())],
    );
    let out = produce_report(&b, &t, &[restricted], &["--timeout", "15"]).await;
    let errs = errors_of(&out);
    assert_eq!(errs.len(), 1, "{out}");
    assert_eq!(errs[0]["code"], POLICY_VIOLATION, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_example_policies_through_kapsule() {
    examples_through_kapsule(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_example_policies_through_kapsule() {
    examples_through_kapsule(Lang::Js).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_example_policies_through_kapsule() {
    examples_through_kapsule(Lang::C).await;
}

/// PII member names the Python and JavaScript pii-fields examples find at any depth (their
/// defaults include these), and the pointers to the same members configured for the C example.
const PII_NAMES: [&str; 3] = ["email", "ssn", "phone"];
const PII_POINTERS: [&str; 3] = ["/ssn", "/customer/email", "/items/0/phone"];
const PII_MARKERS: [&str; 3] = ["REVSSN-", "REVMAIL-", "REVPHONE-"];

/// `n` JSON orders with PII members at three depths (top level, in an object, in an array
/// element) and a clear `trace` header, then one order without personal data.
fn pii_orders(n: usize) -> Vec<TestRecord> {
    let mut records: Vec<TestRecord> = (0..n)
        .map(|i| {
            let v = serde_json::json!({
                "order": i,
                "ssn": format!("REVSSN-{i:04}"),
                "customer": {"email": format!("REVMAIL-{i}@x.io"), "city": "Lyon", "vip": i % 2 == 0},
                "items": [{"sku": format!("A{i}"), "phone": format!("REVPHONE-{i}"), "qty": i}, {"sku": "B"}],
                "note": null,
            });
            with_headers(
                format!("o{i}"),
                serde_json::to_vec(&v).unwrap(),
                &[("trace", format!("t-{i}"))],
            )
        })
        .collect();
    let clear = serde_json::json!({"order": n, "note": "no personal data", "items": []});
    records.push(TestRecord::kv(
        format!("o{n}"),
        serde_json::to_vec(&clear).unwrap(),
    ));
    records
}

fn json_of(v: Option<&[u8]>, what: &str) -> Value {
    serde_json::from_slice(v.unwrap_or_else(|| panic!("{what}: no value")))
        .unwrap_or_else(|e| panic!("{what}: value is not JSON: {e}"))
}

/// `got` has the shape of `want`, every member named in [`PII_NAMES`] is a Kapsule ciphertext
/// string (not the produced value) and every other member equals the produced one.
fn assert_pii_ciphertext(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let (mut wk, mut gk): (Vec<_>, Vec<_>) = (w.keys().collect(), g.keys().collect());
            wk.sort();
            gk.sort();
            assert_eq!(wk, gk, "{at}: members");
            for (k, wv) in w {
                let here = format!("{at}/{k}");
                if PII_NAMES.contains(&k.as_str()) {
                    let c = g[k].as_str().unwrap_or_default();
                    assert!(c.starts_with("kapsule:v1:"), "{here} = {:?}", g[k]);
                    assert_ne!(&g[k], wv, "{here}");
                } else {
                    assert_pii_ciphertext(wv, &g[k], &here);
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{at}: array length");
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                assert_pii_ciphertext(wv, gv, &format!("{at}/{i}"));
            }
        }
        _ => assert_eq!(want, got, "{at}"),
    }
}

/// A reader the example hides PII from: each PII order is valid JSON equal to the stored one (PII
/// members ciphertext as stored, the rest clear and as produced), with no `kapsule.enc` and a
/// `kapsule.withheld` header naming exactly the PII pointers; the order without PII as produced.
fn assert_pii_hidden(
    produced: &[TestRecord],
    stored: &[TestRecord],
    seen: &[ConsumedRecord],
    who: &str,
) {
    assert_eq!(seen.len(), produced.len(), "{who}: record count");
    let (last, pii) = produced.split_last().unwrap();
    for (i, p) in pii.iter().enumerate() {
        let s = &seen[i].record;
        let what = format!("{who}: record {i}");
        let got = json_of(s.value.as_deref(), &what);
        assert_pii_ciphertext(&json_of(p.value.as_deref(), "produced"), &got, &what);
        assert_eq!(
            got,
            json_of(stored[i].value.as_deref(), "stored"),
            "{what}: PII members as stored"
        );
        assert_eq!(s.key, p.key, "{what}: key");
        assert_eq!(s.header("trace"), p.header("trace"), "{what}: trace header");
        assert_eq!(s.header("kapsule.enc"), None, "{what}: no stale descriptor");
        let withheld: Value = serde_json::from_slice(
            s.header("kapsule.withheld")
                .expect("kapsule.withheld header"),
        )
        .unwrap_or_else(|e| panic!("{what}: kapsule.withheld is not JSON: {e}"));
        let mut fields: Vec<&str> = withheld["json_fields"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: withheld {withheld}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        fields.sort_unstable();
        let mut want = PII_POINTERS.to_vec();
        want.sort_unstable();
        assert_eq!(fields, want, "{what}: withheld {withheld}");
        assert_eq!(
            withheld.as_object().map(|o| o.len()),
            Some(1),
            "{what}: only JSON fields withheld: {withheld}"
        );
    }
    assert_records_match(std::slice::from_ref(last), &seen[pii.len()..]);
    let shown: Vec<TestRecord> = seen.iter().map(|c| c.record.clone()).collect();
    assert_no_plaintext(&shown, &pii_markers());
}

fn pii_markers() -> Vec<Vec<u8>> {
    PII_MARKERS.iter().map(|m| m.as_bytes().to_vec()).collect()
}

/// `policies/<lang>/pii-fields` built, and its config: Python and JS use their defaults (PII
/// names at any depth, hidden from `analytics`); C encrypts configured pointers and hides them
/// from `analytics` by default. `policy check` must report the example's reveal for `analytics`,
/// `app` and an unauthenticated client (this also compiles the module into the cache Kapsule
/// loads from).
async fn checked_pii_module(lang: Lang) -> (PathBuf, &'static str) {
    let module = built(lang, "pii-fields").await;
    let config = if lang == Lang::C {
        "fields=/ssn,/customer/email,/items/0/phone"
    } else {
        ""
    };
    for (principal, reads) in [
        (Some("analytics"), "no encrypted part in clear"),
        (Some("app"), "everything in clear"),
        (None, "everything in clear"),
    ] {
        let reads = format!("on fetch this client reads: {reads}");
        let mut a = vec!["--config", config, "--allowed-key-id", "pii-*"];
        a.extend(["--call-timeout-ms", "5000"]);
        a.extend(principal.map(|p| ["--principal", p]).into_iter().flatten());
        let (ok, out) = policy_check(&module, &a).await;
        assert!(ok, "{out}");
        assert!(
            out.contains(&reads),
            "{principal:?}: missing `{reads}` in:\n{out}"
        );
    }
    (module, config)
}

/// `policy:` with the pii-fields `module` bound to topics `rpii-*` under the generous limits.
fn pii_policy(module: &Path, config: &str) -> String {
    format!(
        "policy:\n  watch: false\n{LIMITS}  bindings:\n{}",
        binding("rpii-", module, config, &["pii-$${topic}"])
    )
}

/// How the readers of [`produce_as_app_and_check_reveal`] reach Kapsule and the broker: client
/// script arguments (`--config ...`) of each principal.
struct Readers<'a> {
    kapsule: &'a str,
    app: Vec<String>,
    analytics: Vec<String>,
    /// The broker itself (bypassing Kapsule) and the arguments to read it.
    broker: &'a str,
    direct: Vec<String>,
}

/// Produces [`pii_orders`] as `app` to `topic` through Kapsule and checks: at rest the PII
/// members are ciphertext (the rest of the JSON as produced, `kapsule.enc` on every order with
/// PII, no PII plaintext anywhere in the stored bytes); `app` reads every record exactly as
/// produced; `analytics` (confluent-kafka) reads the PII members as stored. Returns the produced
/// and the stored records.
async fn produce_as_app_and_check_reveal(
    r: &Readers<'_>,
    topic: &str,
) -> (Vec<TestRecord>, Vec<TestRecord>) {
    let records = pii_orders(8);
    let n = records.len();
    ck_produce(r.kapsule, topic, &records, &refs(&r.app)).await;

    let stored: Vec<TestRecord> = ck_consume(r.broker, topic, n, &refs(&r.direct))
        .await
        .into_iter()
        .map(|c| c.record)
        .collect();
    assert_eq!(stored.len(), n);
    assert_no_plaintext(&stored, &pii_markers());
    for (i, (p, s)) in records.iter().zip(&stored).take(n - 1).enumerate() {
        let what = format!("stored record {i}");
        assert!(s.header("kapsule.enc").is_some(), "{what}: no kapsule.enc");
        assert_pii_ciphertext(
            &json_of(p.value.as_deref(), "produced"),
            &json_of(s.value.as_deref(), &what),
            &what,
        );
    }

    let seen = ck_consume(r.kapsule, topic, n, &refs(&r.app)).await;
    assert_records_match(&records, &seen);
    let seen = ck_consume(r.kapsule, topic, n, &refs(&r.analytics)).await;
    assert_pii_hidden(&records, &stored, &seen, "analytics (confluent-kafka)");
    (records, stored)
}

/// Kapsule's log names each principal (`principal=NAME`, as given) and holds no PII.
fn assert_principals_logged(logs: &str, principals: &[&str]) {
    for who in principals {
        assert!(
            logs.contains(&format!("principal={who}")),
            "no `principal={who}` in:\n{logs}"
        );
    }
    for m in PII_MARKERS {
        assert!(!logs.contains(m), "{m} in the log");
    }
}

/// Who may read, with the pii-fields example of `lang` bound in a Kapsule that takes the
/// principal from the client certificate's CN: `app` produces; at rest the PII members are
/// ciphertext; `app` and a client without certificate read everything in clear (the example's
/// `reveal` answers ALL to anyone not in `pii_hidden_from` / `hidden_from`, anonymous included);
/// `analytics` (the example's default hidden principal) reads the PII members as ciphertext
/// with confluent-kafka and kafka-python.
async fn pii_fields_reveal_per_principal(lang: Lang) {
    let (module, config) = checked_pii_module(lang).await;
    let pki = Pki::new("reveal-poly").unwrap();
    let server = pki
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let app = pki.issue("app", KeyKind::EcPkcs8, false, false).unwrap();
    let analytics = pki
        .issue("analytics", KeyKind::EcSec1, false, false)
        .unwrap();
    let ca = pki.ca_cert();
    let tansu = Tansu::start().await.expect("start tansu");
    let kms = LocalKms::new().unwrap();
    let yaml = mtls_principal_config(
        &tansu.bootstrap(),
        &server,
        &ca,
        &kms,
        &pii_policy(&module, config),
    );
    let kapsule = RawKapsule::start(&yaml).await.expect("start kapsule");
    let b = &kapsule.listen;
    let t = topic(&tansu, "rpii-").await;
    let readers = Readers {
        kapsule: b,
        app: ck_ssl(&ca, Some(&app)),
        analytics: ck_ssl(&ca, Some(&analytics)),
        broker: &tansu.bootstrap(),
        direct: Vec::new(),
    };
    let (records, stored) = produce_as_app_and_check_reveal(&readers, &t).await;
    let n = records.len();

    let (seen, errors) = kp_consume_tls(b, &t, n, &ca, Some(&analytics))
        .await
        .expect("kp_consume_tls.py");
    assert!(errors.is_empty(), "{errors:?}");
    assert_pii_hidden(&records, &stored, &seen, "analytics (kafka-python)");

    // No certificate: what the example reveals to an unauthenticated client, everything.
    let seen = ck_consume(b, &t, n, &refs(&ck_ssl(&ca, None))).await;
    assert_records_match(&records, &seen);
    // app again, after analytics' answer was cached: still everything (kafka-python).
    let (seen, errors) = kp_consume_tls(b, &t, n, &ca, Some(&app))
        .await
        .expect("kp_consume_tls.py");
    assert!(errors.is_empty(), "{errors:?}");
    assert_records_match(&records, &seen);

    assert_principals_logged(&kapsule.logs(), &["app (mTLS)", "analytics (mTLS)"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_fields_reveal_per_principal_python() {
    pii_fields_reveal_per_principal(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_fields_reveal_per_principal_js() {
    pii_fields_reveal_per_principal(Lang::Js).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_fields_reveal_per_principal_c() {
    pii_fields_reveal_per_principal(Lang::C).await;
}

/// confluent-kafka arguments for SCRAM `mechanism` as `user`: SASL_SSL to Kapsule trusting `ca`,
/// or SASL_PLAINTEXT straight to the broker without `ca`.
fn ck_scram(mechanism: &str, (user, password): (&str, &str), ca: Option<&Path>) -> Vec<String> {
    let mut v = vec![
        format!(
            "security.protocol={}",
            if ca.is_some() {
                "SASL_SSL"
            } else {
                "SASL_PLAINTEXT"
            }
        ),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ];
    v.extend(ca.map(|ca| format!("ssl.ca.location={}", ca.display())));
    v.into_iter().flat_map(|c| ["--config".into(), c]).collect()
}

/// The Python pii-fields example with the principal from SASL: `app` (SCRAM-SHA-256) and
/// `analytics` (SCRAM-SHA-512) authenticate over SASL_SSL to Kapsule against a tansu that
/// requires SASL; `analytics` reads the PII members as ciphertext, `app` everything.
#[tokio::test(flavor = "multi_thread")]
async fn pii_fields_reveal_per_sasl_principal_python() {
    const APP: (&str, &str) = ("app", "app-secret-256");
    const ANALYTICS: (&str, &str) = ("analytics", "analytics-secret-512");
    let (module, config) = checked_pii_module(Lang::Python).await;
    let t = unique_name("rpii-sasl");
    let tansu = SaslTansu::start(
        &[
            SaslUser::new(APP.0, APP.1, Scram::Sha256),
            SaslUser::new(ANALYTICS.0, ANALYTICS.1, Scram::Sha512),
        ],
        &[(&t, 1)],
    )
    .await
    .expect("tansu with SASL users");
    let pki = Pki::new("reveal-poly-sasl").unwrap();
    let server = pki
        .issue("kapsule", KeyKind::EcPkcs8, false, false)
        .unwrap();
    let ca = pki.ca_cert();
    let kms = LocalKms::new().unwrap();
    let yaml = format!(
        "proxy:\n  listen: \"{{listen}}\"\n  upstream: \"{}\"\n  authentication: required\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\nadmin:\n  listen: \"{{admin}}\"\n{}{}",
        tansu.addr,
        server.cert.display(),
        server.key.display(),
        kms.yaml(),
        pii_policy(&module, config),
    );
    let kapsule = RawKapsule::start(&yaml).await.expect("start kapsule");
    let readers = Readers {
        kapsule: &kapsule.listen,
        app: ck_scram("SCRAM-SHA-256", APP, Some(&ca)),
        analytics: ck_scram("SCRAM-SHA-512", ANALYTICS, Some(&ca)),
        broker: &tansu.addr,
        direct: ck_scram("SCRAM-SHA-256", APP, None),
    };
    produce_as_app_and_check_reveal(&readers, &t).await;
    assert_principals_logged(&kapsule.logs(), &["app", "analytics"]);
}

/// Runs `program args` in the repository root; asserts success, showing its output otherwise.
async fn run_in_repo(program: &str, args: &[&str]) {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} finishes"))
    .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python SDK and examples driven in CPython over the generated bindings (client, memo,
/// reveal, exceptions failing closed, 0.1 signatures).
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_unit_tests_pass() {
    run_in_repo("python3", &["guest-sdk/python/tests/test_sdk.py"]).await;
}

/// The JavaScript SDK and examples driven in Node, bundled as `build.mjs` does, the generated
/// types current, and a TypeScript policy type-checked against `kapsule-policy.d.ts`.
#[tokio::test(flavor = "multi_thread")]
async fn js_sdk_unit_tests_and_types_pass() {
    run_in_repo("node", &["--test", "guest-sdk/js/test/"]).await;
    run_in_repo(
        "guest-sdk/js/node_modules/.bin/tsc",
        &[
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            "bundler",
            "guest-sdk/js/test/types.ts",
        ],
    )
    .await;
}

/// The C SDK with the C examples, compiled natively over the generated bindings and run under
/// AddressSanitizer: client, memo, reveal (the weak default and an override), and no leak of the
/// results Kapsule frees after each call.
#[tokio::test(flavor = "multi_thread")]
async fn c_sdk_unit_tests_pass() {
    run_in_repo("guest-sdk/c/tests/run.sh", &[]).await;
}
