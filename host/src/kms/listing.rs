//! `kapsule keys list` for the KMSs that can enumerate their keys (Vault / OpenBao transit, AWS
//! KMS, Azure Key Vault, Google Cloud KMS): which KEKs a configuration reaches and the state of
//! each. The local KMS lists its key file itself ([`super::local::LocalKms::list_keys`]).
//!
//! Every back end lists the same way: the keys its configuration maps explicitly (`kms.keys`)
//! are always shown, with what is wrong with one as its state; keys found by enumerating the KMS
//! are shown when the back end's key name template turns a Kapsule key id into their name, and
//! left out when they cannot serve as a KEK (such as the HMAC keys that derive record-key keys).

use std::collections::BTreeMap;
use std::future::Future;

use super::KmsError;

/// The placeholder of the cloud back ends' `key_template` and `mac_key_template`.
pub const KEY_ID_PLACEHOLDER: &str = "{key_id}";

/// One KEK as `kapsule keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// Kapsule key id (as rules name it).
    pub key_id: String,
    /// Latest version: new DEKs are wrapped with it (1 where the KMS keeps versions out of
    /// sight, as AWS KMS and Azure Key Vault do).
    pub latest_version: u32,
    /// The KMS's name for the key (transit path, alias, key URL, CryptoKey resource name).
    pub reference: String,
    /// The key's state as the KMS words it (`Enabled`, `ENABLED`, `enabled`, the transit key
    /// type), or what is wrong with a key the configuration maps (`unknown_key`, ...).
    pub state: String,
}

impl ListedKey {
    /// The line `kapsule keys list` prints: id, `v<latest>`, reference and state, tab-separated.
    pub fn line(&self) -> String {
        format!(
            "{}\tv{}\t{}\t{}",
            self.key_id, self.latest_version, self.reference, self.state
        )
    }
}

/// The Kapsule key id that `template` (holding [`KEY_ID_PLACEHOLDER`] once) turns into `name`,
/// if `name` has the template's shape; the back end still checks that the id fits its names.
pub(crate) fn key_id_in_template<'a>(template: &str, name: &'a str) -> Option<&'a str> {
    let (prefix, suffix) = template.split_once(KEY_ID_PLACEHOLDER)?;
    let id = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!id.is_empty()).then_some(id)
}

/// A key to describe for a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Kapsule key id.
    pub key_id: String,
    /// The KMS's name for it.
    pub reference: String,
    /// Named in the configuration's `keys` map (always listed) rather than found by enumerating.
    pub mapped: bool,
}

/// The keys to describe: every entry of `keys`, and every `(key id, reference)` in `found` (the
/// template's matches among the enumerated keys) whose id `keys` does not map (the map wins),
/// sorted by key id.
pub(crate) fn candidates(
    keys: &BTreeMap<String, String>,
    found: impl IntoIterator<Item = (String, String)>,
) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = keys
        .iter()
        .map(|(id, reference)| Candidate {
            key_id: id.clone(),
            reference: reference.clone(),
            mapped: true,
        })
        .collect();
    all.extend(
        found
            .into_iter()
            .filter(|(id, _)| !keys.contains_key(id))
            .map(|(key_id, reference)| Candidate {
                key_id,
                reference,
                mapped: false,
            }),
    );
    all.sort_by(|a, b| (&a.key_id, &a.reference).cmp(&(&b.key_id, &b.reference)));
    all.dedup_by(|a, b| a.key_id == b.key_id && a.reference == b.reference);
    all
}

/// What a back end found out about one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Described {
    /// A key Kapsule can wrap DEKs with, at this version and in this state.
    Usable { latest_version: u32, state: String },
    /// A key that cannot serve as a KEK, and why (its type or purpose).
    Unsuitable(String),
}

/// Describes every candidate with `describe`, in order. A found key that is unsuitable is left
/// out, and one that cannot be described fails the listing; a mapped key is always listed, with
/// the reason it is unsuitable or the class of its error (`unknown_key`, ...) as its state.
pub(crate) async fn describe_all<F, Fut>(
    candidates: Vec<Candidate>,
    describe: F,
) -> Result<Vec<ListedKey>, KmsError>
where
    F: Fn(Candidate) -> Fut,
    Fut: Future<Output = Result<Described, KmsError>>,
{
    let mut listed = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let (latest_version, state) = match describe(candidate.clone()).await {
            Ok(Described::Usable {
                latest_version,
                state,
            }) => (latest_version, state),
            Ok(Described::Unsuitable(_)) if !candidate.mapped => continue,
            Ok(Described::Unsuitable(why)) => (1, why),
            Err(e) if candidate.mapped => (1, e.kind.label().to_owned()),
            Err(e) => return Err(e),
        };
        listed.push(ListedKey {
            key_id: candidate.key_id,
            latest_version,
            reference: candidate.reference,
            state,
        });
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::KmsErrorKind;

    #[test]
    fn template_matches_give_the_key_id_between_prefix_and_suffix() {
        assert_eq!(
            key_id_in_template("alias/kapsule-{key_id}", "alias/kapsule-orders"),
            Some("orders")
        );
        assert_eq!(
            key_id_in_template("alias/{key_id}-kek", "alias/orders-kek"),
            Some("orders")
        );
        assert_eq!(
            key_id_in_template("alias/kapsule-{key_id}", "alias/other"),
            None
        );
        assert_eq!(
            key_id_in_template("alias/kapsule-{key_id}", "alias/kapsule-"),
            None
        );
        assert_eq!(key_id_in_template("no placeholder", "no placeholder"), None);
    }

    #[tokio::test]
    async fn mapped_keys_are_always_listed_and_unsuitable_found_ones_left_out() {
        let keys = BTreeMap::from([
            ("mapped".to_owned(), "ref-m".to_owned()),
            ("gone".to_owned(), "ref-g".to_owned()),
            ("odd".to_owned(), "ref-o".to_owned()),
        ]);
        let found = [
            ("found".to_owned(), "ref-f".to_owned()),
            ("found-mac".to_owned(), "ref-f-mac".to_owned()),
            // Mapped under `keys` too: the map wins.
            ("mapped".to_owned(), "ref-template".to_owned()),
        ];
        let listed = describe_all(candidates(&keys, found), |c| async move {
            {
                match c.reference.as_str() {
                    "ref-g" => Err(KmsError::new(KmsErrorKind::UnknownKey, "gone", "404")),
                    "ref-o" | "ref-f-mac" => Ok(Described::Unsuitable("an HMAC key".into())),
                    _ => Ok(Described::Usable {
                        latest_version: 3,
                        state: "Enabled".into(),
                    }),
                }
            }
        })
        .await
        .unwrap();
        let lines: Vec<String> = listed.iter().map(ListedKey::line).collect();
        assert_eq!(
            lines,
            [
                "found\tv3\tref-f\tEnabled",
                "gone\tv1\tref-g\tunknown_key",
                "mapped\tv3\tref-m\tEnabled",
                "odd\tv1\tref-o\tan HMAC key",
            ]
        );
        // A found key that cannot be described fails the listing (the KMS is down, say).
        let err = describe_all(
            candidates(&BTreeMap::new(), [("x".into(), "y".into())]),
            |_| async { Err::<Described, _>(KmsError::new(KmsErrorKind::Transient, "x", "down")) },
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::Transient);
    }
}
