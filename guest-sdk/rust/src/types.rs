//! Hand-written mirrors of the WIT types, with helpers. Conversions to and from the generated
//! bindings move data; they never copy record contents.

use crate::__bindings::kapsule::policy::types as wit;

/// One Kafka record header. Kafka allows duplicate keys; order is preserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header key bytes (Kafka clients write UTF-8).
    pub key: &'a [u8],
    /// Header value; `None` is a null value.
    pub value: Option<&'a [u8]>,
}

impl Header<'_> {
    /// The key as UTF-8 text, if valid.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(self.key).ok()
    }
}

/// The parts of one record the topic plan asked for (see [`Needs`]), borrowed from the batch
/// Kapsule passed in (no copies). Parts not asked for are `None` / empty whatever the record
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Record key; `None` is a null key or not asked for.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` is a tombstone or not asked for.
    pub value: Option<&'a [u8]>,
    /// Headers in wire order; empty when not asked for.
    pub headers: &'a [Header<'a>],
    /// Timestamp in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Schema id of the value when it is in the Confluent Schema Registry wire format
    /// (`0x00`, 4-byte id, body), whatever [`Needs`] asked for; `None` otherwise.
    pub value_schema_id: Option<u32>,
    /// Schema id of the key when it is in the wire format; `None` otherwise.
    pub key_schema_id: Option<u32>,
}

impl<'a> RecordView<'a> {
    /// Value of the first header named `name`, if present and not null.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name.as_bytes())
            .and_then(|h| h.value)
    }

    /// As [`RecordView::header`], when the value is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Values of every header named `name`, in order (`None` for null values).
    pub fn headers_named<'n>(&self, name: &'n str) -> impl Iterator<Item = Option<&'a [u8]>> + 'n
    where
        'a: 'n,
    {
        self.headers
            .iter()
            .filter(move |h| h.key == name.as_bytes())
            .map(|h| h.value)
    }

    /// Whether a header named `name` is present (even with a null value).
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.key == name.as_bytes())
    }

    /// The value as UTF-8 text, if present and valid.
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The key as UTF-8 text, if present and valid.
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Which part of a record value to encrypt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValuePart {
    /// Leave the value in clear.
    None,
    /// Encrypt the whole value (tombstones stay null).
    Whole,
    /// Encrypt the JSON fields at these RFC 6901 pointers (see [`crate::json_pointer`]).
    JsonFields(Vec<String>),
    /// Encrypt fields of a schema-encoded value (Avro, Protobuf, JSON Schema in the Confluent
    /// wire format) by path and by schema tag; the value stays valid under its schema id.
    SchemaFields(SchemaSelection),
}

/// Which fields of a schema-encoded value to encrypt: the union of explicit dotted paths and
/// of every field the writer schema tags with one of `tags` (Kapsule reads the schema from
/// its registry). Build with [`SchemaSelection::tagged`] / [`SchemaSelection::fields`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SchemaSelection {
    /// Dotted paths from the top-level record, e.g. `customer.email`.
    pub fields: Vec<String>,
    /// Schema tags, e.g. `PII` (`confluent:tags`, `(confluent.field_meta).tags`).
    pub tags: Vec<String>,
}

impl SchemaSelection {
    /// Every field tagged with one of `tags`.
    ///
    /// ```no_run
    /// use kapsule_policy::{Encrypt, SchemaSelection};
    /// let e = Encrypt::new("kek-orders").schema_fields(SchemaSelection::tagged(["PII"]));
    /// ```
    pub fn tagged<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            fields: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// The fields at these dotted paths.
    pub fn fields<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            fields: paths.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// Adds the fields at these dotted paths.
    pub fn and_fields<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields.extend(paths.into_iter().map(Into::into));
        self
    }
}

/// How to encrypt a record. Build with [`Encrypt::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Encrypt {
    /// KEK id; must match the binding's `allowed_key_ids`.
    pub key_id: String,
    /// Which part of the value.
    pub value: ValuePart,
    /// Encrypt the record key deterministically.
    pub record_key: bool,
    /// Names of headers whose values are encrypted.
    pub headers: Vec<String>,
}

impl Encrypt {
    /// Encrypts nothing yet under `key_id`; add parts with the setters.
    ///
    /// ```no_run
    /// use kapsule_policy::Encrypt;
    /// let e = Encrypt::new("kek-orders").whole_value().with_record_key().with_header("pii");
    /// assert!(e.record_key);
    /// ```
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            value: ValuePart::None,
            record_key: false,
            headers: Vec::new(),
        }
    }

    /// Encrypts the whole value.
    pub fn whole_value(mut self) -> Self {
        self.value = ValuePart::Whole;
        self
    }

    /// Encrypts these JSON pointers of the value.
    pub fn json_fields<I, S>(mut self, pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.value = ValuePart::JsonFields(pointers.into_iter().map(Into::into).collect());
        self
    }

    /// Encrypts these fields of a schema-encoded value (see [`SchemaSelection`]).
    pub fn schema_fields(mut self, selection: SchemaSelection) -> Self {
        self.value = ValuePart::SchemaFields(selection);
        self
    }

    /// Encrypts the record key (deterministically).
    pub fn with_record_key(mut self) -> Self {
        self.record_key = true;
        self
    }

    /// Encrypts every header named `name`.
    pub fn with_header(mut self, name: impl Into<String>) -> Self {
        self.headers.push(name.into());
        self
    }
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Forward unchanged.
    Pass,
    /// Encrypt as described.
    Encrypt(Encrypt),
    /// Refuse the record (and its whole partition batch) with this message.
    Reject(String),
}

/// Which parts of each record [`crate::Policy::decide`] needs. Asking for less is faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// The record key.
    pub key: bool,
    /// The record value.
    pub value: bool,
    /// The record headers.
    pub headers: bool,
}

impl Needs {
    /// Nothing but the timestamp.
    pub fn none() -> Self {
        Self::default()
    }
    /// Also the key.
    pub fn with_key(mut self) -> Self {
        self.key = true;
        self
    }
    /// Also the value.
    pub fn with_value(mut self) -> Self {
        self.value = true;
        self
    }
    /// Also the headers.
    pub fn with_headers(mut self) -> Self {
        self.headers = true;
        self
    }
}

/// What a per-record decision depends on. Declaring it lets Kapsule call
/// [`crate::Policy::decide`] once per distinct value instead of once per record, and reuse the
/// answers (per topic and client principal, until the module is replaced).
///
/// It is a promise: two records with the same value must get the same decision. Kapsule relies
/// on it and shows `decide` only one record per value it has not seen yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MemoKey {
    /// The decision may depend on anything [`Needs`] shows: every record is decided.
    #[default]
    None,
    /// Only on the value of the first header with this name (absent and null are values too).
    Header(String),
    /// Only on the whole record key (a null key is a value too).
    RecordKey,
    /// Only on the first `n` bytes of the record key (shorter keys: the whole key).
    KeyPrefix(u32),
    /// Only on the values of the first header with each of these names, together (absent and
    /// null are values too); 1 to 16 distinct names.
    Headers(Vec<String>),
}

impl MemoKey {
    /// Only on the value of the first header called `name`.
    pub fn header(name: impl Into<String>) -> Self {
        MemoKey::Header(name.into())
    }

    /// Only on the values of the first header with each of these names.
    ///
    /// ```no_run
    /// use kapsule_policy::MemoKey;
    /// let memo = MemoKey::headers(["tenant", "class"]);
    /// ```
    pub fn headers<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MemoKey::Headers(names.into_iter().map(Into::into).collect())
    }
}

/// The answer for a whole topic and client, computed once and cached by Kapsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPlan {
    /// Every record passes in clear.
    PassAll,
    /// Every record is encrypted the same way.
    EncryptAll(Encrypt),
    /// Each batch goes to [`crate::Policy::decide`] with the parts `needs` asks for; `memo`
    /// says what the decision depends on (see [`MemoKey`]).
    PerRecord {
        /// Which parts of each record `decide` sees.
        needs: Needs,
        /// What the decision depends on.
        memo: MemoKey,
    },
    /// Every record is refused with this message.
    RejectAll(String),
}

impl TopicPlan {
    /// Every batch goes to [`crate::Policy::decide`], showing the parts in `needs`; every record
    /// is decided.
    pub fn per_record(needs: Needs) -> Self {
        TopicPlan::PerRecord {
            needs,
            memo: MemoKey::None,
        }
    }

    /// Declares what the decisions of a [`TopicPlan::PerRecord`] plan depend on (other plans are
    /// returned unchanged):
    ///
    /// ```no_run
    /// use kapsule_policy::{MemoKey, Needs, TopicPlan};
    /// // The tenant pattern: one `decide` call per tenant, not per record.
    /// let plan = TopicPlan::per_record(Needs::none().with_headers()).memo(MemoKey::header("tenant"));
    /// ```
    pub fn memo(self, key: MemoKey) -> Self {
        match self {
            TopicPlan::PerRecord { needs, .. } => TopicPlan::PerRecord { needs, memo: key },
            other => other,
        }
    }
}

/// The client a call is made for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Client {
    /// Who the client authenticated as; `None` on a connection without authentication.
    pub principal: Option<Principal>,
}

impl Client {
    /// The principal's name, if the client authenticated.
    pub fn principal_name(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.name.as_str())
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The SASL user name, OAuth subject or certificate subject (e.g. `alice`,
    /// `CN=alice,O=Example`).
    pub name: String,
    /// How `name` was established.
    pub mechanism: AuthMechanism,
}

/// How a client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// SASL/PLAIN, accepted by the broker.
    SaslPlain,
    /// SASL/SCRAM-SHA-256, accepted by the broker.
    SaslScramSha256,
    /// SASL/SCRAM-SHA-512, accepted by the broker.
    SaslScramSha512,
    /// SASL/OAUTHBEARER, accepted by the broker.
    SaslOauthBearer,
    /// A TLS client certificate verified by Kapsule.
    Mtls,
}

/// What a client may read of a topic's encrypted records on Fetch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Reveal {
    /// Decrypt every encrypted part (the default).
    #[default]
    All,
    /// Decrypt only these parts; the rest reaches the client as stored (ciphertext).
    Parts(RevealParts),
    /// Deliver records as stored on the broker: ciphertext with their `kapsule.enc` descriptor.
    Ciphertext,
    /// Refuse the fetch (TOPIC_AUTHORIZATION_FAILED) with this message.
    Deny(String),
}

/// The encrypted parts a client may read in clear under [`Reveal::Parts`]. Starts empty (nothing
/// decrypted); add parts with the builder methods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevealParts {
    /// Decrypt the value: a wholly encrypted value, or every encrypted JSON field.
    pub value: bool,
    /// When `value` is false: decrypt only the encrypted JSON fields at these RFC 6901 pointers.
    pub json_fields: Vec<String>,
    /// Decrypt the record key.
    pub record_key: bool,
    /// Decrypt the values of the encrypted headers with these names.
    pub headers: Vec<String>,
}

impl RevealParts {
    /// Nothing decrypted.
    pub fn none() -> Self {
        Self::default()
    }
    /// Also the whole value (or every encrypted JSON field).
    pub fn with_value(mut self) -> Self {
        self.value = true;
        self
    }
    /// Also the encrypted JSON fields at these pointers (e.g. `/customer/email`).
    pub fn with_json_fields<I, S>(mut self, pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.json_fields
            .extend(pointers.into_iter().map(Into::into));
        self
    }
    /// Also the record key.
    pub fn with_record_key(mut self) -> Self {
        self.record_key = true;
        self
    }
    /// Also the values of the encrypted headers called `name`.
    pub fn with_header(mut self, name: impl Into<String>) -> Self {
        self.headers.push(name.into());
        self
    }
}

impl From<ValuePart> for wit::ValuePart {
    fn from(v: ValuePart) -> Self {
        match v {
            ValuePart::None => wit::ValuePart::None,
            ValuePart::Whole => wit::ValuePart::Whole,
            ValuePart::JsonFields(f) => wit::ValuePart::JsonFields(f),
            ValuePart::SchemaFields(s) => wit::ValuePart::SchemaFields(wit::SchemaSelection {
                fields: s.fields,
                tags: s.tags,
            }),
        }
    }
}

impl From<Encrypt> for wit::Encrypt {
    fn from(e: Encrypt) -> Self {
        Self {
            key_id: e.key_id,
            value: e.value.into(),
            record_key: e.record_key,
            headers: e.headers,
        }
    }
}

impl From<Decision> for wit::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Pass => wit::Decision::Pass,
            Decision::Encrypt(e) => wit::Decision::Encrypt(e.into()),
            Decision::Reject(m) => wit::Decision::Reject(m),
        }
    }
}

impl From<Needs> for wit::Needs {
    fn from(n: Needs) -> Self {
        let mut f = wit::Needs::empty();
        if n.key {
            f |= wit::Needs::KEY;
        }
        if n.value {
            f |= wit::Needs::VALUE;
        }
        if n.headers {
            f |= wit::Needs::HEADERS;
        }
        f
    }
}

impl From<MemoKey> for wit::MemoKey {
    fn from(m: MemoKey) -> Self {
        match m {
            MemoKey::None => wit::MemoKey::None,
            MemoKey::Header(h) => wit::MemoKey::Header(h),
            MemoKey::RecordKey => wit::MemoKey::RecordKey,
            MemoKey::KeyPrefix(n) => wit::MemoKey::KeyPrefix(n),
            MemoKey::Headers(h) => wit::MemoKey::Headers(h),
        }
    }
}

impl From<TopicPlan> for wit::TopicPlan {
    fn from(p: TopicPlan) -> Self {
        match p {
            TopicPlan::PassAll => wit::TopicPlan::PassAll,
            TopicPlan::EncryptAll(e) => wit::TopicPlan::EncryptAll(e.into()),
            TopicPlan::PerRecord { needs, memo } => wit::TopicPlan::PerRecord(wit::PerRecordPlan {
                needs: needs.into(),
                memo: memo.into(),
            }),
            TopicPlan::RejectAll(m) => wit::TopicPlan::RejectAll(m),
        }
    }
}

impl From<wit::Client> for Client {
    fn from(c: wit::Client) -> Self {
        Client {
            principal: c.principal.map(|p| Principal {
                name: p.name,
                mechanism: match p.mechanism {
                    wit::AuthMechanism::SaslPlain => AuthMechanism::SaslPlain,
                    wit::AuthMechanism::SaslScramSha256 => AuthMechanism::SaslScramSha256,
                    wit::AuthMechanism::SaslScramSha512 => AuthMechanism::SaslScramSha512,
                    wit::AuthMechanism::SaslOauthbearer => AuthMechanism::SaslOauthBearer,
                    wit::AuthMechanism::Mtls => AuthMechanism::Mtls,
                },
            }),
        }
    }
}

impl From<Reveal> for wit::Reveal {
    fn from(r: Reveal) -> Self {
        match r {
            Reveal::All => wit::Reveal::All,
            Reveal::Ciphertext => wit::Reveal::Ciphertext,
            Reveal::Deny(m) => wit::Reveal::Deny(m),
            Reveal::Parts(p) => wit::Reveal::Parts(wit::RevealParts {
                value: p.value,
                json_fields: p.json_fields,
                record_key: p.record_key,
                headers: p.headers,
            }),
        }
    }
}
