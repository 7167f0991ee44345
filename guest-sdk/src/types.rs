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

/// The answer for a whole topic, computed once and cached by Kapsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPlan {
    /// Every record passes in clear.
    PassAll,
    /// Every record is encrypted the same way.
    EncryptAll(Encrypt),
    /// Each batch goes to [`crate::Policy::decide`] with these parts.
    PerRecord(Needs),
    /// Every record is refused with this message.
    RejectAll(String),
}

impl From<ValuePart> for wit::ValuePart {
    fn from(v: ValuePart) -> Self {
        match v {
            ValuePart::None => wit::ValuePart::None,
            ValuePart::Whole => wit::ValuePart::Whole,
            ValuePart::JsonFields(f) => wit::ValuePart::JsonFields(f),
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

impl From<TopicPlan> for wit::TopicPlan {
    fn from(p: TopicPlan) -> Self {
        match p {
            TopicPlan::PassAll => wit::TopicPlan::PassAll,
            TopicPlan::EncryptAll(e) => wit::TopicPlan::EncryptAll(e.into()),
            TopicPlan::PerRecord(n) => wit::TopicPlan::PerRecord(n.into()),
            TopicPlan::RejectAll(m) => wit::TopicPlan::RejectAll(m),
        }
    }
}
