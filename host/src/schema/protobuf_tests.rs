use super::*;
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
    locate(t, &v, 5)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, v[f.range].to_vec(), f.encoding))
        .collect()
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
    assert!(Targets::resolve(
        &s,
        &FieldSelection {
            fields: vec![],
            tags: vec!["PII".into()]
        }
    )
    .unwrap_err()
    .contains("not read from Protobuf"));
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
