//! `kms: { type: aws, ... }`: the configuration of the AWS KMS back end, its start-up checks and
//! how a Kapsule key id becomes an AWS key reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::kms::key_id::validate_key_map;
use crate::kms::listing::key_id_in_template;
use crate::kms::retry::validate_policy;
use crate::kms::{KmsError, KmsErrorKind};

fn default_key_template() -> String {
    "alias/{key_id}".to_owned()
}

pub use crate::kms::listing::KEY_ID_PLACEHOLDER;

/// `kms: { type: aws, ... }` configuration.
///
/// ```yaml
/// kms:
///   type: aws
///   region: eu-west-1
///   key_template: "alias/kapsule-{key_id}"   # default "alias/{key_id}"
///   keys: { payments: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab" }
///   mac_key_template: "alias/kapsule-{key_id}-mac"   # HMAC keys for record-key encryption
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// AWS region of the KMS keys (e.g. `eu-west-1`); requests go to that region's endpoint.
    pub region: String,
    /// How a Kapsule key id without an entry in `keys` becomes an AWS key reference:
    /// `{key_id}` is replaced by the id (default `alias/{key_id}`). Such ids may hold only the
    /// characters AWS allows in alias names (`A-Z a-z 0-9 _ -`).
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Explicit KEKs: Kapsule key id → AWS key id, key ARN, alias name or alias ARN.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// HMAC keys (`HMAC_256`, usage `GENERATE_VERIFY_MAC`) that derive the deterministic
    /// record-key encryption key, as a template like `key_template`. Unset: topics whose rule
    /// encrypts record keys fail with a configuration error naming this field.
    #[serde(default)]
    pub mac_key_template: Option<String>,
    /// Endpoint override (a VPC endpoint, or a local KMS for tests), e.g.
    /// `https://vpce-0123.kms.eu-west-1.vpce.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Named profile of the shared config/credentials files (default: `AWS_PROFILE`, else
    /// `default`).
    #[serde(default)]
    pub profile: Option<String>,
    /// PEM CA certificate(s) to trust for TLS to the endpoint (in addition to the system roots).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one KMS request in milliseconds (default 5000).
    #[serde(default = "crate::kms::retry::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of throttled or failed requests after the first attempt (default 3).
    #[serde(default = "crate::kms::retry::default_retries")]
    pub retries: u32,
}

impl AwsKmsConfig {
    /// Appends one message per problem to `problems`.
    pub fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if !is_region(&self.region) {
            problems.push(format!(
                "{path}.region: '{}' is not an AWS region name like eu-west-1",
                self.region.escape_debug()
            ));
        }
        for (field, template) in [
            ("key_template", Some(&self.key_template)),
            ("mac_key_template", self.mac_key_template.as_ref()),
        ] {
            if let Some(t) = template {
                if let Err(why) = check_template(t, &self.region) {
                    problems.push(format!("{path}.{field}: {why}"));
                }
            }
        }
        validate_key_map(
            path,
            &self.keys,
            |reference| check_key_reference(reference, &self.region),
            problems,
        );
        if let Some(endpoint) = &self.endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => {}
                Ok(_) => problems.push(format!(
                    "{path}.endpoint: '{endpoint}' must be an http:// or https:// URL with a host"
                )),
                Err(e) => problems.push(format!(
                    "{path}.endpoint: '{endpoint}' is not a valid URL ({e})"
                )),
            }
        }
        if self.profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
            problems.push(format!("{path}.profile: must not be empty"));
        }
        validate_policy(path, self.timeout_ms, self.retries, problems);
    }

    /// The AWS key reference of Kapsule key id `key_id`: its `keys` entry, else `key_template`
    /// filled in. Refused (before any call) when the id cannot be part of an alias name.
    pub fn key_reference(&self, key_id: &str) -> Result<String, KmsError> {
        match self.keys.get(key_id) {
            Some(r) => Ok(r.clone()),
            None => fill_template(&self.key_template, key_id, "key_template"),
        }
    }

    /// The Kapsule key id whose `key_template` alias is `alias_name` (`alias/...`, as ListAliases
    /// names it), if any: `None` for other aliases, for ids the template cannot hold, and for ids
    /// mapped under `keys` (the map wins over the template).
    pub fn key_id_of_alias(&self, alias_name: &str) -> Option<String> {
        let template = match self.key_template.split_once(":alias/") {
            Some((_, name)) => format!("alias/{name}"),
            None => self.key_template.clone(),
        };
        let id = key_id_in_template(&template, alias_name)?;
        let fits = fill_template(&self.key_template, id, "key_template").is_ok();
        (fits && !self.keys.contains_key(id)).then(|| id.to_owned())
    }

    /// The HMAC key reference used to derive keys for `key_id`.
    pub fn mac_key_reference(&self, key_id: &str) -> Result<String, KmsError> {
        let template = self.mac_key_template.as_deref().ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Other,
                key_id,
                "record-key encryption needs an HMAC key in AWS KMS: set kms.mac_key_template \
                 (see docs/kms.md, AWS KMS)",
            )
        })?;
        fill_template(template, key_id, "mac_key_template")
    }

    /// The start-up warning for a plain-http endpoint, if any.
    pub fn insecure_transport_warning(&self) -> Option<String> {
        self.endpoint
            .as_deref()
            .filter(|e| e.trim().to_ascii_lowercase().starts_with("http://"))
            .map(|_| {
                "kms.endpoint uses http://: signed AWS KMS requests and every plaintext data key \
                 cross the network unencrypted; use https:// outside a test setup"
                    .to_owned()
            })
    }

    /// Checks that `profile` exists in the shared config or credentials file (the SDK would only
    /// find out at the first KMS call).
    pub fn check_profile(&self) -> anyhow::Result<()> {
        let Some(profile) = &self.profile else {
            return Ok(());
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(default)))
        };
        let files: Vec<PathBuf> = [
            file("AWS_CONFIG_FILE", ".aws/config"),
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if files.iter().any(|f| file_has_profile(f, profile)) {
            return Ok(());
        }
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        anyhow::bail!(
            "kms.profile: profile '{profile}' is in none of {} (set AWS_CONFIG_FILE / \
             AWS_SHARED_CREDENTIALS_FILE, or remove kms.profile to use the default chain)",
            shown.join(", ")
        )
    }
}

/// True when `path` has a `[profile NAME]` or `[NAME]` section.
fn file_has_profile(path: &Path, name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines().any(|line| {
        let Some(section) = line
            .trim()
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
        else {
            return false;
        };
        let section = section.trim();
        section == name || section.strip_prefix("profile ").map(str::trim) == Some(name)
    })
}

fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// Characters AWS allows in an alias name after `alias/`.
fn is_alias_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/'
}

fn is_key_uuid(s: &str) -> bool {
    let s = s.strip_prefix("mrk-").map_or(s, |rest| rest);
    if s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_alias_name(name: &str) -> Result<(), String> {
    let rest = name
        .strip_prefix("alias/")
        .ok_or_else(|| format!("'{name}' is not an alias name (alias/...)"))?;
    if rest.is_empty() || name.len() > 256 || !rest.chars().all(is_alias_char) {
        return Err(format!(
            "alias '{name}' must be alias/ plus 1-250 characters of A-Z a-z 0-9 / _ -"
        ));
    }
    if rest.starts_with("aws/") {
        return Err(format!(
            "'{name}' is an AWS managed key, which only AWS services may use; create a customer managed key"
        ));
    }
    Ok(())
}

/// Checks one AWS key reference: key id (UUID or `mrk-` multi-Region id), key ARN, alias name or
/// alias ARN in `region`.
pub(crate) fn check_key_reference(reference: &str, region: &str) -> Result<(), String> {
    if reference.starts_with("alias/") {
        return check_alias_name(reference);
    }
    if let Some(arn) = reference.strip_prefix("arn:") {
        let parts: Vec<&str> = arn.splitn(5, ':').collect();
        let [partition, service, arn_region, account, resource] = parts[..] else {
            return Err(format!(
                "'{reference}' is not an ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"
            ));
        };
        if !partition.starts_with("aws") || service != "kms" {
            return Err(format!("'{reference}' is not an AWS KMS ARN"));
        }
        if arn_region != region {
            return Err(format!(
                "'{reference}' is in region {arn_region}, but kms.region is {region} (one Kapsule talks to one region)"
            ));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("'{reference}' has no 12-digit account id"));
        }
        return match resource.split_once('/') {
            Some(("key", id)) if is_key_uuid(id) => Ok(()),
            Some(("alias", _)) => check_alias_name(resource),
            _ => Err(format!("'{reference}' names neither key/ID nor alias/NAME")),
        };
    }
    if is_key_uuid(reference) {
        return Ok(());
    }
    Err(format!(
        "'{reference}' is not a key id, key ARN, alias name (alias/...) or alias ARN"
    ))
}

fn check_template(template: &str, region: &str) -> Result<(), String> {
    if template.matches(KEY_ID_PLACEHOLDER).count() != 1 {
        return Err(format!(
            "'{template}' must contain {KEY_ID_PLACEHOLDER} exactly once"
        ));
    }
    let sample = template.replace(KEY_ID_PLACEHOLDER, "k");
    if !(sample.starts_with("alias/") || (sample.starts_with("arn:") && sample.contains(":alias/")))
    {
        return Err(format!(
            "'{template}' must produce an alias name (alias/...) or alias ARN; map other key references under kms.keys"
        ));
    }
    check_key_reference(&sample, region)
}

fn fill_template(template: &str, key_id: &str, field: &str) -> Result<String, KmsError> {
    let fits = !key_id.is_empty()
        && key_id.len() <= 200
        && key_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !fits {
        return Err(KmsError::new(
            KmsErrorKind::UnknownKey,
            key_id,
            format!(
                "key id cannot be part of an AWS alias name (only A-Z a-z 0-9 _ -, at most 200); \
                 map it to a key under kms.keys or change the rule's key_id (kms.{field})"
            ),
        ));
    }
    Ok(template.replace(KEY_ID_PLACEHOLDER, key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn cfg(extra: &str) -> AwsKmsConfig {
        serde_norway::from_str(&format!("region: eu-west-1\n{extra}")).unwrap()
    }

    #[test]
    fn aliases_map_back_to_key_ids_only_through_the_template() {
        let mut c = cfg(&format!(
            "key_template: \"arn:aws:kms:eu-west-1:111122223333:alias/kapsule-{{key_id}}-kek\"\nkeys: {{ pay: \"{ARN}\" }}\n"
        ));
        assert_eq!(
            c.key_id_of_alias("alias/kapsule-orders-kek").as_deref(),
            Some("orders")
        );
        for other in [
            "alias/orders",
            "alias/kapsule-orders",
            "alias/kapsule-a/b-kek",
            "alias/kapsule--kek",
            "alias/kapsule-pay-kek",
        ] {
            assert_eq!(c.key_id_of_alias(other), None, "{other}");
        }
        c.key_template = "alias/{key_id}".into();
        assert_eq!(c.key_id_of_alias("alias/x_1").as_deref(), Some("x_1"));
    }

    #[test]
    fn key_references_of_every_documented_form_are_accepted() {
        for ok in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            ARN,
            "alias/kapsule-orders",
            "arn:aws:kms:eu-west-1:111122223333:alias/kapsule/orders",
        ] {
            assert_eq!(check_key_reference(ok, "eu-west-1"), Ok(()), "{ok}");
        }
        for bad in [
            "orders",
            "alias/",
            "alias/aws/ebs",
            "alias/has space",
            "arn:aws:s3:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:key/not-a-uuid",
        ] {
            assert!(check_key_reference(bad, "eu-west-1").is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut c = cfg("");
        c.region = "Europe".into();
        c.key_template = "alias/fixed".into();
        c.mac_key_template = Some("{key_id}".into());
        c.keys.insert("a/b".into(), "nope".into());
        c.endpoint = Some("ftp://x".into());
        c.profile = Some(" ".into());
        c.timeout_ms = 1;
        c.retries = 11;
        let mut p = Vec::new();
        c.validate("kms", &mut p);
        assert_eq!(p.len(), 9, "{p:#?}");
        let mut p = Vec::new();
        cfg(&format!("keys: {{ pay: \"{ARN}\" }}\nmac_key_template: \"alias/{{key_id}}-mac\"\nendpoint: http://127.0.0.1:4566\n"))
            .validate("kms", &mut p);
        assert!(p.is_empty(), "{p:?}");
        let err =
            serde_norway::from_str::<AwsKmsConfig>("region: eu-west-1\nkey: x\n").unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
    }

    #[test]
    fn key_ids_map_to_references_and_unfit_ids_are_refused_before_any_call() {
        let c = cfg(&format!(
            "key_template: \"alias/kapsule-{{key_id}}\"\nkeys: {{ pay: \"{ARN}\" }}\n"
        ));
        assert_eq!(c.key_reference("orders").unwrap(), "alias/kapsule-orders");
        assert_eq!(c.key_reference("pay").unwrap(), ARN);
        for bad in ["orders.v1", "a b", "", "x/../y"] {
            let e = c.key_reference(bad).unwrap_err();
            assert_eq!(e.kind, KmsErrorKind::UnknownKey, "{bad}");
        }
        let e = c.mac_key_reference("orders").unwrap_err();
        assert!(e.message.contains("mac_key_template"), "{e:?}");
    }

    #[test]
    fn profiles_are_found_in_either_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config");
        std::fs::write(&f, "[default]\nregion=x\n[profile prod]\nrole_arn=y\n").unwrap();
        assert!(file_has_profile(&f, "prod"));
        assert!(file_has_profile(&f, "default"));
        assert!(!file_has_profile(&f, "staging"));
        assert!(!file_has_profile(&dir.path().join("missing"), "prod"));
    }
}
