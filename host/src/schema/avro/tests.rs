use super::*;
use crate::schema::varint::write_zigzag;
use crate::schema::{found_spans, MAX_LISTED_FIELDS};

fn sel(fields: &[&str], tags: &[&str]) -> FieldSelection {
    FieldSelection {
        fields: fields.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

/// Avro binary encoder for the test values.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn long(&mut self, v: i64) -> &mut Self {
        write_zigzag(&mut self.0, v);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.long(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Every construct: nested and recursive records, unions, arrays (positive and negative block
/// counts), maps, enums, fixed, primitives, logical types, namespaces.
const SCHEMA: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "ok", "type": "boolean"},
    {"name": "price", "type": "double"},
    {"name": "ratio", "type": "float"},
    {"name": "ssn", "type": "string", "confluent:tags": ["PII"]},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
      {"name": "email", "type": ["null", "string"], "confluent:tags": ["PII"]},
      {"name": "photo", "type": "bytes"},
      {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}}
    ]}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
    {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
      "fields": [{"name": "card", "type": "string"}, {"name": "qty", "type": "int"}]}}},
    {"name": "attrs", "type": {"type": "map", "values": "string"}},
    {"name": "referrer", "type": ["null", "Customer"]},
    {"name": "next", "type": ["null", "Order"]}
  ]
}"#;

fn order(next: bool) -> Vec<u8> {
    let mut e = Enc::default();
    e.long(42)
        .raw(&[1])
        .raw(&1.5f64.to_le_bytes())
        .raw(&2.5f32.to_le_bytes());
    e.str("123-45-6789");
    e.long(1)
        .str("ann@example.com")
        .long(3)
        .raw(&[1, 2, 3])
        .str("u-1");
    e.long(1).raw(&[9, 9, 9, 9]);
    // Two lines in a negative-count block (with its byte size), then the end.
    e.long(-2)
        .long(0)
        .str("4111")
        .long(2)
        .str("5500")
        .long(3)
        .long(0);
    e.long(1).str("k").str("v").long(0);
    e.long(0); // referrer: null
    if next {
        e.long(1).raw(&order(false));
    } else {
        e.long(0);
    }
    e.0
}

fn found(t: &Targets, body: &[u8]) -> Vec<(String, Vec<u8>, FieldEncoding)> {
    let mut v = vec![0, 0, 0, 0, 1];
    v.extend_from_slice(body);
    found_spans(&v, locate(t, &v, 5))
}

fn s(x: &str) -> Vec<u8> {
    let mut e = Enc::default();
    e.str(x);
    e.0
}

#[test]
fn paths_and_tags_find_string_and_bytes_fields_everywhere() {
    let schema = Arc::new(AvroSchema::parse(SCHEMA).unwrap());
    let t = Targets::resolve(&schema, &sel(&["lines.card", "customer.photo"], &["PII"])).unwrap();
    let got = found(&t, &order(true));
    let want = vec![
        ("ssn".to_owned(), s("123-45-6789"), FieldEncoding::AvroText),
        (
            "customer.email".to_owned(),
            s("ann@example.com"),
            FieldEncoding::AvroText,
        ),
        (
            "customer.photo".to_owned(),
            vec![6, 1, 2, 3],
            FieldEncoding::AvroRaw,
        ),
        ("lines.card".to_owned(), s("4111"), FieldEncoding::AvroText),
        ("lines.card".to_owned(), s("5500"), FieldEncoding::AvroText),
        // Tags hold at every depth of the recursive record; paths only where they point.
        (
            "next.ssn".to_owned(),
            s("123-45-6789"),
            FieldEncoding::AvroText,
        ),
        (
            "next.customer.email".to_owned(),
            s("ann@example.com"),
            FieldEncoding::AvroText,
        ),
    ];
    assert_eq!(got, want);
}

#[test]
fn null_branches_are_left_alone_and_bad_bodies_refused() {
    let schema = Arc::new(AvroSchema::parse(SCHEMA).unwrap());
    let t = Targets::resolve(&schema, &sel(&[], &["PII"])).unwrap();
    let mut body = order(false);
    // customer.email -> null branch: splice `1, "ann@example.com"` to `0`.
    let at = body
        .windows(16)
        .position(|w| w == s("ann@example.com"))
        .unwrap()
        - 1;
    body.splice(at..at + 17, [0u8]);
    let got = found(&t, &body);
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        vec!["ssn"]
    );

    let mut v = vec![0, 0, 0, 0, 1];
    v.extend_from_slice(&order(false));
    for cut in [6, 20, v.len() - 1] {
        assert!(
            locate(&t, &v[..cut], 5).is_err(),
            "truncated at {cut} accepted"
        );
    }
    let mut extra = v.clone();
    extra.push(0);
    assert!(locate(&t, &extra, 5)
        .unwrap_err()
        .contains("left after the record"));
    let mut bad_bool = v.clone();
    bad_bool[5 + 1] = 2;
    assert!(locate(&t, &bad_bool, 5).is_err());
}

#[test]
fn selections_that_do_not_fit_the_schema_name_the_field() {
    let schema = Arc::new(AvroSchema::parse(SCHEMA).unwrap());
    for (fields, tags, want) in [
        (&["id"][..], &[][..], "field `id` is an Avro long"),
        (
            &["customer"],
            &[],
            "field `customer` is an Avro record shop.Customer",
        ),
        (&["lines.qty"], &[], "field `lines.qty` is an Avro int"),
        (&["customer.phone"], &[], "`customer` has no field `phone`"),
        (&["nope"], &[], "the top-level record has no field `nope`"),
        (&["customer..email"], &[], "empty name"),
    ] {
        let e = Targets::resolve(&schema, &sel(fields, tags)).unwrap_err();
        assert!(e.contains(want), "{fields:?}: {e}");
    }
    let tagged_int = r#"{"type":"record","name":"R","fields":[
        {"name":"age","type":"int","confluent:tags":["PII"]}]}"#;
    let s2 = Arc::new(AvroSchema::parse(tagged_int).unwrap());
    let e = Targets::resolve(&s2, &sel(&[], &["PII"])).unwrap_err();
    assert!(
        e.contains("field `age` of record `R` (tagged PII) is an Avro int"),
        "{e}"
    );
    assert!(Targets::resolve(&s2, &sel(&[], &["OTHER"])).is_ok());
}

#[test]
fn malformed_schemas_are_refused() {
    for bad in [
        "not json",
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Missing"}]}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":[["int"]]}]}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","confluent:tags":"PII"}]}"#,
        r#"{"type":"enum","name":"E"}"#,
        r#"[]"#,
    ] {
        assert!(AvroSchema::parse(bad).is_err(), "accepted {bad}");
    }
    assert!(AvroSchema::parse(r#""string""#).is_ok());
}

/// A schema that uses a record type of another subject: the referenced schema is read first,
/// as the registry lists it; its tagged field is found through the reference. Without the
/// reference, the type name is unknown.
#[test]
fn named_types_from_referenced_schemas_are_known() {
    let customer = r#"{"type": "record", "name": "Customer", "namespace": "shop.party",
        "fields": [{"name": "email", "type": "string", "confluent:tags": ["PII"]}]}"#;
    let order = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"}, {"name": "buyer", "type": "shop.party.Customer"},
        {"name": "seller", "type": ["null", "shop.party.Customer"]}]}"#;
    let e = AvroSchema::parse(order).unwrap_err();
    assert!(e.contains("unknown type name `shop.party.Customer`"), "{e}");
    let mut p = Parser::default();
    p.definitions(customer).unwrap();
    let s = Arc::new(p.finish(order).unwrap());
    let t = Targets::resolve(&s, &sel(&[], &["PII"])).unwrap();
    let mut e = Enc::default();
    e.long(7).str("a@x").long(1).str("b@y");
    let mut v = vec![0, 0, 0, 0, 9];
    v.extend_from_slice(&e.0);
    let got: Vec<(String, Vec<u8>)> = locate(&t, &v, 5)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, v[f.range].to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("buyer.email".to_owned(), b"\x06a@x".to_vec()),
            ("seller.email".to_owned(), b"\x06b@y".to_vec()),
        ]
    );
    // A type defined twice (in a reference and in the schema) is refused.
    let mut p = Parser::default();
    p.definitions(customer).unwrap();
    assert!(p.finish(customer).unwrap_err().contains("defined twice"));
}

/// The constructs table of docs/schema-fields.md: which selected types are refused (naming the
/// field and its type), an array of strings (every element), `decimal` on bytes and a union of
/// string with bytes and null are encrypted, and defaults, aliases and docs are reader concerns the writer walk ignores.
#[test]
fn constructs_table_selected_types() {
    let schema = r#"{"type": "record", "name": "R", "doc": "d", "aliases": ["Old"], "fields": [
      {"name": "st", "type": {"type": "enum", "name": "S", "symbols": ["A"]}},
      {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 2}},
      {"name": "arr", "type": {"type": "array", "items": "int"}},
      {"name": "mp", "type": {"type": "map", "values": "long"}},
      {"name": "names", "type": {"type": "array", "items": "string"}},
      {"name": "mixed", "type": ["null", "string", "int"]},
      {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
      {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
      {"name": "either", "type": ["null", "string", "bytes"], "default": null},
      {"name": "note", "type": "string", "default": "none", "aliases": ["memo"], "doc": "x"}]}"#;
    let schema = Arc::new(AvroSchema::parse(schema).unwrap());
    for (field, want) in [
        ("st", "is an Avro enum"),
        ("fx", "is an Avro fixed"),
        ("arr", "is an Avro int"), // an array of ints: its elements' type
        ("mp", "is an Avro long"),
        ("mixed", "is an Avro union"),
        ("ts", "is an Avro long"),
    ] {
        let e = Targets::resolve(&schema, &sel(&[field], &[])).unwrap_err();
        assert!(e.contains(want) && e.contains(field), "{field}: {e}");
    }
    let t = Targets::resolve(&schema, &sel(&["names", "amount", "either", "note"], &[])).unwrap();
    let mut e = Enc::default();
    e.long(0) // st
        .raw(b"ab") // fx
        .long(1)
        .long(3)
        .long(0) // arr
        .long(1)
        .str("k")
        .long(4)
        .long(0) // mp
        .long(2)
        .str("n1")
        .str("n2")
        .long(0) // names: every element
        .long(2)
        .long(5) // mixed: int branch
        .long(1_700_000_000_000) // ts
        .long(2)
        .raw(&[0x30, 0x39]) // amount: 123.45
        .long(2)
        .long(1)
        .raw(&[9]) // either: bytes branch
        .str("n");
    assert_eq!(
        found(&t, &e.0),
        vec![
            ("names".to_owned(), s("n1"), FieldEncoding::AvroText),
            ("names".to_owned(), s("n2"), FieldEncoding::AvroText),
            (
                "amount".to_owned(),
                vec![4, 0x30, 0x39],
                FieldEncoding::AvroRaw
            ),
            ("either".to_owned(), vec![2, 9], FieldEncoding::AvroRaw),
            ("note".to_owned(), s("n"), FieldEncoding::AvroText),
        ]
    );
}

/// `(path, tags, kind)` of a listing, for compact assertions.
fn listed(l: &SchemaListing) -> Vec<(String, String, ListedKind)> {
    l.fields
        .iter()
        .map(|f| (f.path.clone(), f.tags.join(","), f.kind))
        .collect()
}

#[test]
fn list_fields_walks_records_arrays_maps_unions_and_stops_at_recursion() {
    use ListedKind::{Bytes, Other, Text};
    let schema = AvroSchema::parse(SCHEMA).unwrap();
    let l = schema.list_fields();
    assert!(!l.truncated);
    let want: Vec<(&str, &str, ListedKind)> = vec![
        ("id", "", Other),
        ("ok", "", Other),
        ("price", "", Other),
        ("ratio", "", Other),
        ("ssn", "PII", Text),
        ("customer", "", Other),
        ("customer.email", "PII", Text),
        ("customer.photo", "", Bytes),
        ("customer.uid", "", Text),
        ("status", "", Other),
        ("hash", "", Other),
        ("lines", "", Other),
        ("lines.card", "", Text),
        ("lines.qty", "", Other),
        ("attrs", "", Text),
        ("referrer", "", Other),
        ("referrer.email", "PII", Text),
        ("referrer.photo", "", Bytes),
        ("referrer.uid", "", Text),
        // `Order` inside itself is not entered again.
        ("next", "", Other),
    ];
    let want: Vec<(String, String, ListedKind)> = want
        .into_iter()
        .map(|(p, t, k)| (p.to_owned(), t.to_owned(), k))
        .collect();
    assert_eq!(listed(&l), want);
    // Every listed text or bytes path resolves as a selection; every other one is refused.
    let schema = Arc::new(schema);
    for f in &l.fields {
        let r = Targets::resolve(&schema, &sel(&[&f.path], &[]));
        assert_eq!(r.is_ok(), f.kind != Other, "{}: {:?}", f.path, r.err());
    }
}

#[test]
fn list_fields_merges_union_branches_and_is_bounded() {
    // Two record branches with a field of the same name: listed once, tags merged, and
    // `other` when the branches disagree on what it holds.
    let schema = AvroSchema::parse(
        r#"{"type": "record", "name": "E", "fields": [{"name": "body", "type": [
            {"type": "record", "name": "A", "fields": [
                {"name": "who", "type": "string", "confluent:tags": ["PII"]},
                {"name": "n", "type": "string"}]},
            {"type": "record", "name": "B", "fields": [
                {"name": "who", "type": "string", "confluent:tags": ["EMAIL"]},
                {"name": "n", "type": "long"}]}]}]}"#,
    )
    .unwrap();
    let l = schema.list_fields();
    assert_eq!(
        listed(&l),
        vec![
            ("body".to_owned(), String::new(), ListedKind::Other),
            (
                "body.who".to_owned(),
                "PII,EMAIL".to_owned(),
                ListedKind::Text
            ),
            ("body.n".to_owned(), String::new(), ListedKind::Other),
        ]
    );
    // More fields than the cap: listed up to it, marked truncated.
    let fields: Vec<String> = (0..MAX_LISTED_FIELDS + 5)
        .map(|i| format!(r#"{{"name": "f{i}", "type": "string"}}"#))
        .collect();
    let big = format!(
        r#"{{"type": "record", "name": "Big", "fields": [{}]}}"#,
        fields.join(",")
    );
    let l = AvroSchema::parse(&big).unwrap().list_fields();
    assert!(l.truncated);
    assert_eq!(l.fields.len(), MAX_LISTED_FIELDS);
}
