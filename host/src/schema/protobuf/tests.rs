use super::*;
use crate::schema::found_spans;
use crate::schema::varint::{write_unsigned, write_zigzag};

const PROTO: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
option java_package = "x.y"; // comment
/* block
   comment */
message Other { string x = 1; }
message Order {
  int64 id = 1;
  string ssn = 2 [deprecated = true, (confluent.field_meta) = { tags: ["PII"] }];
  Customer customer = 3;
  repeated Line lines = 4;
  map<string, string> attrs = 5;
  oneof contact { string phone = 6; bytes token = 7; }
  google.protobuf.Timestamp at = 8;
  Status status = 9;
  enum Status { NEW = 0; PAID = 1; }
  message Customer { string email = 1; optional bytes photo = 2; }
  message Line { string card = 1; int32 qty = 2; }
  reserved 20 to 30;
}
"#;

fn sel(fields: &[&str]) -> FieldSelection {
    FieldSelection {
        fields: fields.iter().map(|s| s.to_string()).collect(),
        tags: vec![],
    }
}

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn tag(&mut self, n: u64, wire: u64) -> &mut Self {
        write_unsigned(&mut self.0, (n << 3) | wire);
        self
    }
    fn varint(&mut self, n: u64, v: u64) -> &mut Self {
        self.tag(n, 0);
        write_unsigned(&mut self.0, v);
        self
    }
    fn bytes(&mut self, n: u64, b: &[u8]) -> &mut Self {
        self.tag(n, 2);
        write_unsigned(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
}

fn order() -> Vec<u8> {
    let customer = Enc::default()
        .bytes(1, b"ann@x")
        .bytes(2, b"\x01\x02")
        .0
        .clone();
    let line = |c: &[u8]| Enc::default().bytes(1, c).varint(2, 3).0.clone();
    let entry = Enc::default()
        .bytes(1, b"k")
        .bytes(2, b"secret-v")
        .0
        .clone();
    let mut e = Enc::default();
    e.varint(1, 42)
        .bytes(2, b"123-45")
        .bytes(3, &customer)
        .bytes(4, &line(b"4111"))
        .bytes(4, &line(b"5500"))
        .bytes(5, &entry)
        .bytes(6, b"555")
        .bytes(8, &Enc::default().varint(1, 99).0)
        .varint(9, 1)
        .varint(99, 7) // unknown field: skipped, kept
        .tag(50, 5);
    e.0.extend_from_slice(&[1, 2, 3, 4]);
    e.0
}

fn found(t: &Targets, indexes: &[i64], body: &[u8]) -> Vec<(String, Vec<u8>, FieldEncoding)> {
    let mut v = vec![0, 0, 0, 0, 1];
    if indexes == [0] {
        v.push(0);
    } else {
        write_zigzag(&mut v, indexes.len() as i64);
        for &i in indexes {
            write_zigzag(&mut v, i);
        }
    }
    v.extend_from_slice(body);
    found_spans(&v, locate(t, &v, 5))
}

fn lp(b: &[u8]) -> Vec<u8> {
    let mut v = vec![b.len() as u8];
    v.extend_from_slice(b);
    v
}

#[test]
fn selected_string_and_bytes_fields_are_found_through_messages_maps_and_oneofs() {
    let s = Arc::new(ProtoSchema::parse(PROTO).unwrap());
    let t = Targets::resolve(
        &s,
        &sel(&[
            "ssn",
            "customer.email",
            "customer.photo",
            "lines.card",
            "attrs",
            "phone",
        ]),
    )
    .unwrap();
    let got = found(&t, &[1], &order());
    assert_eq!(
        got,
        vec![
            ("ssn".into(), lp(b"123-45"), FieldEncoding::ProtoText),
            (
                "customer.email".into(),
                lp(b"ann@x"),
                FieldEncoding::ProtoText
            ),
            (
                "customer.photo".into(),
                lp(b"\x01\x02"),
                FieldEncoding::ProtoRaw
            ),
            ("lines.card".into(), lp(b"4111"), FieldEncoding::ProtoText),
            ("lines.card".into(), lp(b"5500"), FieldEncoding::ProtoText),
            ("attrs".into(), lp(b"secret-v"), FieldEncoding::ProtoText),
            ("phone".into(), lp(b"555"), FieldEncoding::ProtoText),
        ]
    );
    // Message indexes choose the message: [0] is `Other`, whose field 1 is `x`.
    let t = Targets::resolve(&s, &sel(&["x"])).unwrap();
    let other = Enc::default().bytes(1, b"xx").0.clone();
    assert_eq!(found(&t, &[0], &other).len(), 1);
}

#[test]
fn unfit_selections_and_bodies_are_refused() {
    let s = Arc::new(ProtoSchema::parse(PROTO).unwrap());
    for (p, want) in [
        ("id", "field `id` is a Protobuf scalar"),
        (
            "customer",
            "field `customer` is a Protobuf message shop.Order.Customer",
        ),
        ("status", "scalar or enum"),
        ("at", "from another file"),
        ("nope", "no top-level message has a field `nope`"),
    ] {
        let e = Targets::resolve(&s, &sel(&[p])).unwrap_err();
        assert!(e.contains(want), "{p}: {e}");
    }
    let t = Targets::resolve(&s, &sel(&["ssn"])).unwrap();
    let mut v = vec![0, 0, 0, 0, 1, 2, 2];
    v.extend_from_slice(&order());
    assert!(locate(&t, &v[..v.len() - 2], 5).is_err(), "truncated");
    assert!(
        locate(&t, &[0, 0, 0, 0, 1, 2, 8], 5).is_err(),
        "index out of range"
    );
    for bad in [
        "message { }",
        "message M { string a = ; }",
        "message M { group G = 1 {} }",
        "syntax = \"proto3\";",
    ] {
        assert!(ProtoSchema::parse(bad).is_err(), "accepted {bad}");
    }
}

/// What confluent-kafka's Python `ProtobufSerializer` registers (and Apicurio returns): the
/// base64 of a serialized `FileDescriptorProto`, here for `package shop; message Order { int64
/// id = 1; string ssn = 2; repeated string cards = 3; }`, and a value it serialized.
#[test]
fn base64_file_descriptors_are_read_like_proto_text() {
    let registered = "CgtvcmRlci5wcm90bxIEc2hvcCIvCgVPcmRlchIKCgJpZBgBIAEoAxILCgNzc24YAiABKAkSDQoFY2FyZHMYAyADKAliBnByb3RvMw==";
    let s = Arc::new(ProtoSchema::parse(registered).unwrap());
    let t = Targets::resolve(&s, &sel(&["ssn", "cards"])).unwrap();
    let value = hex::decode("00000000020008011201531a01611a0162").unwrap();
    let got: Vec<_> = locate(&t, &value, 5)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, value[f.range].to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ssn".to_owned(), lp(b"S")),
            ("cards".to_owned(), lp(b"a")),
            ("cards".to_owned(), lp(b"b"))
        ]
    );
    let e = Targets::resolve(&s, &sel(&["id"])).unwrap_err();
    assert!(e.contains("field `id` is a Protobuf scalar"), "{e}");
}

fn tagged(tags: &[&str]) -> FieldSelection {
    FieldSelection {
        fields: vec![],
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

const TAGGED_PROTO: &str = r#"
syntax = "proto3";
package shop;
import "confluent/meta.proto";
message Order {
  int64 id = 1 [(confluent.field_meta).doc = "not a tag"];
  string ssn = 2 [deprecated = true, (confluent.field_meta) = { doc: "x" tags: ["PII", "GOV"] params: { key: "tags" value: "v" } }];
  Customer customer = 3;
  map<string, string> attrs = 4 [(confluent.field_meta).tags = "PII"];
  int32 age = 5 [(confluent.field_meta) = { tags: "AGE" }];
  string note = 6;
  message Customer { string email = 1 [(.confluent.field_meta) = { tags: "PII" }]; bytes photo = 2; }
}
"#;

#[test]
fn confluent_field_meta_tags_select_fields_in_proto_text() {
    let s = Arc::new(ProtoSchema::parse(TAGGED_PROTO).unwrap());
    let customer = Enc::default()
        .bytes(1, b"ann@x")
        .bytes(2, b"\x01")
        .0
        .clone();
    let entry = Enc::default().bytes(1, b"k").bytes(2, b"v").0.clone();
    let body = Enc::default()
        .varint(1, 7)
        .bytes(2, b"123")
        .bytes(3, &customer)
        .bytes(4, &entry)
        .varint(5, 40)
        .bytes(6, b"n")
        .0
        .clone();
    let t = Targets::resolve(&s, &tagged(&["PII"])).unwrap();
    assert_eq!(
        found(&t, &[0], &body),
        vec![
            ("ssn".into(), lp(b"123"), FieldEncoding::ProtoText),
            (
                "customer.email".into(),
                lp(b"ann@x"),
                FieldEncoding::ProtoText
            ),
            ("attrs".into(), lp(b"v"), FieldEncoding::ProtoText),
        ]
    );
    // Tags and paths together: the union.
    let t = Targets::resolve(
        &s,
        &FieldSelection {
            fields: vec!["note".into()],
            tags: vec!["GOV".into()],
        },
    )
    .unwrap();
    let paths: Vec<String> = found(&t, &[0], &body).into_iter().map(|f| f.0).collect();
    assert_eq!(paths, ["ssn", "note"]);
    // A tag nothing carries selects nothing; a tagged int is refused, naming it.
    let t = Targets::resolve(&s, &tagged(&["NONE"])).unwrap();
    assert!(found(&t, &[0], &body).is_empty());
    let e = Targets::resolve(&s, &tagged(&["AGE"])).unwrap_err();
    assert!(
        e.contains("field `age` of message `shop.Order` (tagged AGE) is a Protobuf scalar"),
        "{e}"
    );
    for bad in [
        "message M { string a = 1 [(confluent.field_meta).tags = 5]; }",
        "message M { string a = 1 [(confluent.field_meta).tags = [\"A\"; }",
    ] {
        assert!(ProtoSchema::parse(bad).is_err(), "accepted {bad}");
    }
}

/// What confluent-kafka's `ProtobufSerializer` registers for a message whose fields carry
/// `(confluent.field_meta)` options: `ssn` tagged PII (with a `doc`), `cards` tagged X and PII,
/// `age` (int32) tagged AGE.
#[test]
fn confluent_field_meta_tags_are_read_from_file_descriptors() {
    let registered = "CgtvcmRlci5wcm90bxIEc2hvcBoUY29uZmx1ZW50L21ldGEucHJvdG8iZQoFT3JkZXISCgoCaWQYASABKAMSHQoDc3NuGAIgASgJQhCCRA0KBnNvY2lhbBoDUElJEhoKBWNhcmRzGAMgAygJQguCRAgaAVgaA1BJSRIVCgNhZ2UYBCABKAVCCIJEBRoDQUdFYgZwcm90bzM=";
    let s = Arc::new(ProtoSchema::parse(registered).unwrap());
    let t = Targets::resolve(&s, &tagged(&["PII"])).unwrap();
    let body = Enc::default()
        .varint(1, 1)
        .bytes(2, b"S")
        .bytes(3, b"a")
        .bytes(3, b"b")
        .varint(4, 9)
        .0
        .clone();
    let got: Vec<String> = found(&t, &[0], &body).into_iter().map(|f| f.0).collect();
    assert_eq!(got, ["ssn", "cards", "cards"]);
    let t = Targets::resolve(&s, &tagged(&["X"])).unwrap();
    assert_eq!(found(&t, &[0], &body).len(), 2);
    let e = Targets::resolve(&s, &tagged(&["AGE"])).unwrap_err();
    assert!(e.contains("field `age`") && e.contains("scalar"), "{e}");
}

/// A schema importing another registered file (a schema reference): the imported file's
/// messages resolve field types, and message indexes count the schema's own messages only.
#[test]
fn imported_files_resolve_field_types() {
    let party = r#"syntax = "proto3"; package shop.party;
        message Customer { string email = 1 [(confluent.field_meta).tags = "PII"]; int32 age = 2; }"#;
    let order = r#"syntax = "proto3"; package shop; import "party.proto";
        message Order { int64 id = 1; shop.party.Customer buyer = 2; string ssn = 3; }"#;
    let alone = Arc::new(ProtoSchema::parse(order).unwrap());
    let e = Targets::resolve(&alone, &sel(&["buyer.email"])).unwrap_err();
    assert!(e.contains("from another file"), "{e}");
    let s = Arc::new(
        ProtoSchema::parse_with_imports(order, vec![ProtoSchema::read(party).unwrap()]).unwrap(),
    );
    let buyer = Enc::default().bytes(1, b"a@x").varint(2, 30).0.clone();
    let body = Enc::default()
        .varint(1, 1)
        .bytes(2, &buyer)
        .bytes(3, b"123")
        .0
        .clone();
    let t = Targets::resolve(&s, &sel(&["buyer.email", "ssn"])).unwrap();
    let got: Vec<String> = found(&t, &[0], &body).into_iter().map(|f| f.0).collect();
    assert_eq!(got, ["buyer.email", "ssn"]);
    let t = Targets::resolve(&s, &tagged(&["PII"])).unwrap();
    assert_eq!(found(&t, &[0], &body)[0].0, "buyer.email");
    // Index [1] would be a second message of the schema's own file: there is none.
    let mut v = vec![0, 0, 0, 0, 1, 2, 2];
    v.extend_from_slice(&body);
    assert!(locate(&t, &v, 5).is_err());
}

/// The constructs table of docs/schema-fields.md: message indexes reach nested messages,
/// packed repeated scalars and enums are skipped and kept, map values of a message type are
/// walked, `optional` and `repeated` strings are encrypted, well-known types are opaque.
#[test]
fn constructs_table_nested_indexes_packed_maps_and_well_known_types() {
    // [0, 0]: the first message nested in the first top-level one, `Outer.Inner`. Tags apply in
    // any message; paths start at a top-level message's fields.
    let nested = r#"
syntax = "proto3";
message Outer {
  message Inner { string secret = 1 [(confluent.field_meta).tags = "PII"]; }
  Inner inner = 1;
}
"#;
    let s = Arc::new(ProtoSchema::parse(nested).unwrap());
    let t = Targets::resolve(&s, &tagged(&["PII"])).unwrap();
    let inner = Enc::default().bytes(1, b"s3").0.clone();
    assert_eq!(
        found(&t, &[0, 0], &inner),
        vec![("secret".into(), lp(b"s3"), FieldEncoding::ProtoText)]
    );
    let outer = Enc::default().bytes(1, &inner).0.clone();
    assert_eq!(
        found(&t, &[0], &outer),
        vec![("inner.secret".into(), lp(b"s3"), FieldEncoding::ProtoText)]
    );

    let proto = r#"
syntax = "proto3";
import "google/protobuf/timestamp.proto";
message Shop {
  repeated int32 nums = 1 [packed = true];
  map<string, Card> cards = 2;
  optional string nick = 3;
  repeated string aliases = 4;
  Kind kind = 5;
  google.protobuf.Timestamp at = 6;
  message Card { string pan = 1; }
  enum Kind { A = 0; B = 1; }
}
"#;
    let s = Arc::new(ProtoSchema::parse(proto).unwrap());
    let t = Targets::resolve(&s, &sel(&["cards.pan", "nick", "aliases"])).unwrap();
    let entry = Enc::default()
        .bytes(1, b"main")
        .bytes(2, &Enc::default().bytes(1, b"4111").0)
        .0
        .clone();
    let body = Enc::default()
        .bytes(1, &[1, 2, 0x96, 0x01]) // packed: 1, 2, 150
        .bytes(2, &entry)
        .bytes(3, b"nn")
        .bytes(4, b"a1")
        .bytes(4, b"a2")
        .varint(5, 1)
        .bytes(6, &Enc::default().varint(1, 7).0)
        .0
        .clone();
    assert_eq!(
        found(&t, &[0], &body),
        vec![
            ("cards.pan".into(), lp(b"4111"), FieldEncoding::ProtoText),
            ("nick".into(), lp(b"nn"), FieldEncoding::ProtoText),
            ("aliases".into(), lp(b"a1"), FieldEncoding::ProtoText),
            ("aliases".into(), lp(b"a2"), FieldEncoding::ProtoText),
        ]
    );
    for (p, want) in [
        ("nums", "scalar"),
        ("kind", "enum"),
        ("at", "from another file"),
        ("at.seconds", "another file"),
        ("cards", "is a Protobuf message Shop.Card"), // a map of messages: select inside it
    ] {
        let e = Targets::resolve(&s, &sel(&[p])).unwrap_err();
        assert!(e.contains(want), "{p}: {e}");
    }
}

#[test]
fn list_fields_walks_messages_maps_oneof_and_every_top_level_message() {
    use crate::schema::ListedKind::{Bytes, Other, Text};
    let schema = Arc::new(
        ProtoSchema::parse(&format!(
            "{PROTO}\nmessage Tree {{ string label = 1 [(confluent.field_meta).tags = \"PII\"]; \
             repeated Tree children = 2; map<string, Order.Line> by_id = 3; }}"
        ))
        .unwrap(),
    );
    let l = schema.list_fields();
    assert!(!l.truncated);
    let got: Vec<(&str, String, crate::schema::ListedKind)> = l
        .fields
        .iter()
        .map(|f| (f.path.as_str(), f.tags.join(","), f.kind))
        .collect();
    let want = [
        ("x", "", Text),
        ("id", "", Other),
        ("ssn", "PII", Text),
        ("customer", "", Other),
        ("customer.email", "", Text),
        ("customer.photo", "", Bytes),
        ("lines", "", Other),
        ("lines.card", "", Text),
        ("lines.qty", "", Other),
        ("attrs", "", Text),
        ("phone", "", Text),
        ("token", "", Bytes),
        ("at", "", Other),
        ("status", "", Other),
        ("label", "PII", Text),
        // `Tree` inside itself is not entered again.
        ("children", "", Other),
        ("by_id", "", Other),
        ("by_id.card", "", Text),
        ("by_id.qty", "", Other),
    ];
    let want: Vec<(&str, String, crate::schema::ListedKind)> = want
        .iter()
        .map(|(p, t, k)| (*p, t.to_string(), *k))
        .collect();
    assert_eq!(got, want);
    // Every listed text or bytes path resolves as a selection; every other one is refused.
    for f in &l.fields {
        let r = Targets::resolve(&schema, &sel(&[&f.path]));
        assert_eq!(r.is_ok(), f.kind != Other, "{}: {:?}", f.path, r.err());
    }
}
