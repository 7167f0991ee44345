//! Encrypts each record under its tenant's key, the tenant coming from a record header.
//!
//! Config (JSON, every field optional):
//! `{"header": "tenant", "key_prefix": "tenant-", "on_missing": "reject", "record_key": false,
//! "memo": true}`
//!
//! A record with header `tenant: acme` is encrypted (whole value) under key `tenant-acme`.
//! Tenant names must be 1..=64 characters of `[A-Za-z0-9_-]`; others are refused. Records
//! without the header are refused (`on_missing: "reject"`, default) or passed (`"pass"`).
//!
//! The decision depends only on the tenant header, and the plan says so (`memo`, default true):
//! Kapsule asks once per tenant and reuses the answer. `"memo": false` makes every record be
//! decided (to compare).

use kapsule_policy::{
    export_policy, Client, Decision, Encrypt, MemoKey, Needs, Policy, RecordView, TopicPlan,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    #[serde(default = "default_on_missing")]
    on_missing: String,
    #[serde(default)]
    record_key: bool,
    #[serde(default = "default_memo")]
    memo: bool,
}

fn default_memo() -> bool {
    true
}

fn default_header() -> String {
    "tenant".into()
}
fn default_prefix() -> String {
    "tenant-".into()
}
fn default_on_missing() -> String {
    "reject".into()
}

struct TenantKeys {
    header: String,
    key_prefix: String,
    pass_missing: bool,
    record_key: bool,
    memo: bool,
}

fn valid_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Policy for TenantKeys {
    fn init(config: &str) -> Result<Self, String> {
        let text = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let c: Config =
            serde_json::from_str(text).map_err(|e| format!("tenant-keys config: {e}"))?;
        let pass_missing = match c.on_missing.as_str() {
            "reject" => false,
            "pass" => true,
            other => {
                return Err(format!(
                    "tenant-keys config: on_missing `{other}` is not reject|pass"
                ))
            }
        };
        if c.header.is_empty() {
            return Err("tenant-keys config: `header` is empty".into());
        }
        Ok(Self {
            header: c.header,
            key_prefix: c.key_prefix,
            pass_missing,
            record_key: c.record_key,
            memo: c.memo,
        })
    }

    fn plan(&self, _topic: &str, _client: &Client) -> TopicPlan {
        // The decision depends only on the tenant header: Kapsule asks once per tenant.
        let plan = TopicPlan::per_record(Needs::none().with_headers());
        if self.memo {
            plan.memo(MemoKey::header(&self.header))
        } else {
            plan
        }
    }

    fn decide(&self, _topic: &str, _client: &Client, records: &[RecordView]) -> Vec<Decision> {
        records
            .iter()
            .map(|r| match r.header_str(&self.header) {
                Some(t) if valid_tenant(t) => {
                    let mut e = Encrypt::new(format!("{}{t}", self.key_prefix)).whole_value();
                    if self.record_key {
                        e = e.with_record_key();
                    }
                    Decision::Encrypt(e)
                }
                Some(_) => Decision::Reject(format!(
                    "header `{}` is not a valid tenant name ([A-Za-z0-9_-], 1 to 64)",
                    self.header
                )),
                None if self.pass_missing => Decision::Pass,
                None => Decision::Reject(format!("record has no `{}` header", self.header)),
            })
            .collect()
    }
}

export_policy!(TenantKeys);
