use super::*;

fn parse(schema: &Value, references: &[(&str, &Value)]) -> JsonSchema {
    let texts: Vec<(&str, String)> = references
        .iter()
        .map(|(n, v)| (*n, v.to_string()))
        .collect();
    let named: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    JsonSchema::parse(&schema.to_string(), &named).unwrap()
}

/// Sorted names the selection resolves to.
fn names(schema: &JsonSchema, s: &FieldSelection) -> Vec<String> {
    let mut n = Targets::resolve(schema, s).unwrap().names;
    n.sort();
    n
}

fn sel(fields: &[&str], tags: &[&str]) -> FieldSelection {
    FieldSelection {
        fields: fields.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn paths_and_tags_resolve_to_string_properties() {
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ssn": {"type": "string", "confluent:tags": ["PII"]},
            "customer": {"$ref": "#/definitions/Customer"}
        },
        "definitions": {"Customer": {"type": "object", "properties": {
            "email": {"type": ["string", "null"], "confluent:tags": ["PII"]},
            "name": {"type": "string"}
        }}}
    });
    let schema = parse(&schema, &[]);
    let t = Targets::resolve(&schema, &sel(&["customer.name"], &["PII"])).unwrap();
    let mut names = t.names.clone();
    names.sort();
    assert_eq!(names, vec!["customer.email", "customer.name", "ssn"]);
    let body = br#"{"id":7,"ssn":"123","customer":{"email":null,"name":"Ann"}}"#;
    let mut value = vec![0, 0, 0, 0, 9];
    value.extend_from_slice(body);
    let found = locate(&t, &value, 5).unwrap();
    let texts: Vec<_> = found
        .iter()
        .map(|f| (f.path.as_str(), &value[f.range.clone()]))
        .collect();
    assert_eq!(
        texts,
        vec![("customer.name", &b"\"Ann\""[..]), ("ssn", &b"\"123\""[..])]
    );

    let e = Targets::resolve(&schema, &sel(&["id"], &[])).unwrap_err();
    assert!(e.contains("field `id` is not of type string"), "{e}");
    let e = Targets::resolve(&schema, &sel(&["customer.phone"], &[])).unwrap_err();
    assert!(e.contains("`customer` has no property `phone`"), "{e}");
}

#[test]
fn tags_out_of_reach_are_refused() {
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {"cards": {"type": "array", "items": {
            "type": "object", "properties": {"pan": {"type": "string", "confluent:tags": ["PII"]}}
        }}}
    });
    let schema = parse(&schema, &[]);
    let e = Targets::resolve(&schema, &sel(&[], &["PII"])).unwrap_err();
    assert!(e.contains("not reachable"), "{e}");
    assert!(Targets::resolve(&schema, &sel(&[], &["OTHER"])).is_ok());
}

#[test]
fn references_by_name_with_fragments_and_local_refs_inside_them() {
    // Confluent's semantics: `$ref` names a reference by its `name`; a fragment points inside
    // it, and a local `$ref` inside a referenced schema is local to that schema.
    let customer = serde_json::json!({
        "type": "object",
        "properties": {
            "email": {"type": "string", "confluent:tags": ["PII"]},
            "address": {"$ref": "#/$defs/Address"},
            "name": {"type": "string"}
        },
        "$defs": {"Address": {"type": "object", "properties": {
            "street": {"type": "string", "confluent:tags": ["PII"]},
            "zip": {"type": "string"}
        }}}
    });
    let card = serde_json::json!({
        "definitions": {"Card": {"type": "object", "properties": {
            "pan": {"type": "string", "confluent:tags": ["PCI"]}}}}
    });
    let order = serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "customer": {"$ref": "customer.schema.json"},
            "card": {"$ref": "card.json#/definitions/Card"},
            "billing": {"$ref": "#/definitions/Billing"}
        },
        "definitions": {"Billing": {"type": "object", "properties": {
            "iban": {"type": "string", "confluent:tags": ["PII"]}}}}
    });
    let schema = parse(
        &order,
        &[("customer.schema.json", &customer), ("card.json", &card)],
    );
    assert_eq!(
        names(&schema, &sel(&[], &["PII", "PCI"])),
        vec![
            "billing.iban",
            "card.pan",
            "customer.address.street",
            "customer.email"
        ]
    );
    assert_eq!(
        names(&schema, &sel(&["customer.address.zip", "card.pan"], &[])),
        vec!["card.pan", "customer.address.zip"]
    );
    let e = Targets::resolve(&schema, &sel(&["customer.phone"], &[])).unwrap_err();
    assert!(e.contains("`customer` has no property `phone`"), "{e}");

    // The located spans are the referenced properties' values in the body.
    let t = Targets::resolve(&schema, &sel(&[], &["PII"])).unwrap();
    let body = br#"{"id":1,"customer":{"email":"a@b","name":"N","address":{"street":"S","zip":"Z"}},"card":{"pan":"4111"},"billing":{"iban":"DE1"}}"#;
    let mut value = vec![0, 0, 0, 0, 9];
    value.extend_from_slice(body);
    let mut found: Vec<_> = locate(&t, &value, 5)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, String::from_utf8(value[f.range].to_vec()).unwrap()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("billing.iban".to_owned(), "\"DE1\"".to_owned()),
            ("customer.address.street".to_owned(), "\"S\"".to_owned()),
            ("customer.email".to_owned(), "\"a@b\"".to_owned()),
        ]
    );
}

#[test]
fn relative_refs_resolve_against_the_id_and_unknown_refs_are_refused() {
    let customer = serde_json::json!({
        "$id": "https://example.com/schemas/customer.json",
        "type": "object",
        "properties": {"email": {"type": "string", "confluent:tags": ["PII"]}}
    });
    let order = serde_json::json!({
        "$id": "https://example.com/schemas/order.json",
        "type": "object",
        "properties": {"customer": {"$ref": "customer.json"}}
    });
    // Registered under the absolute URI; the schema refers to it relatively.
    let schema = parse(
        &order,
        &[("https://example.com/schemas/customer.json", &customer)],
    );
    assert_eq!(names(&schema, &sel(&[], &["PII"])), vec!["customer.email"]);
    // Registered under another name, found by its own `$id`.
    let schema = parse(&order, &[("cust", &customer)]);
    assert_eq!(names(&schema, &sel(&[], &["PII"])), vec!["customer.email"]);

    let orphan = serde_json::json!({"type": "object",
        "properties": {"customer": {"$ref": "missing.json"}}});
    let e = Targets::resolve(&parse(&orphan, &[]), &sel(&["customer"], &[])).unwrap_err();
    assert!(
        e.contains("none of the schema's references (it has none)"),
        "{e}"
    );
    let e = Targets::resolve(
        &parse(&orphan, &[("other.json", &customer)]),
        &sel(&[], &["PII"]),
    )
    .unwrap_err();
    assert!(
        e.contains("`$ref: missing.json`") && e.contains("other.json"),
        "{e}"
    );
    let e = JsonSchema::parse("{}", &[("bad.json", "{not json")]).unwrap_err();
    assert!(
        e.contains("referenced JSON Schema `bad.json` is not JSON"),
        "{e}"
    );
}

#[test]
fn recursion_and_unsupported_constructs_fail_closed() {
    // A recursive schema: nothing tagged under the recursion is fine, a tag under it refused.
    let tree = |tag: bool| {
        let mut node = serde_json::json!({"type": "object", "properties": {
            "label": {"type": "string"},
            "child": {"$ref": "#/definitions/Node"}}});
        if tag {
            node["properties"]["label"]["confluent:tags"] = serde_json::json!(["PII"]);
        }
        serde_json::json!({"type": "object",
            "properties": {"root": {"$ref": "#/definitions/Node"},
                           "owner": {"type": "string", "confluent:tags": ["OWNER"]}},
            "definitions": {"Node": node}})
    };
    let plain = parse(&tree(false), &[]);
    assert_eq!(names(&plain, &sel(&[], &["OWNER"])), vec!["owner"]);
    assert_eq!(
        names(&plain, &sel(&["root.child.child.label"], &[])),
        vec!["root.child.child.label"]
    );
    let tagged = parse(&tree(true), &[]);
    let e = Targets::resolve(&tagged, &sel(&[], &["PII"])).unwrap_err();
    assert!(e.contains("recursive `$ref`"), "{e}");

    // Tagged properties under combinators, items, additionalProperties and patternProperties.
    for placement in [
        serde_json::json!({"oneOf": [{"type": "object", "properties": {"x": {"type": "string", "confluent:tags": ["PII"]}}}]}),
        serde_json::json!({"anyOf": [{"type": "object", "properties": {"x": {"type": "string", "confluent:tags": ["PII"]}}}]}),
        serde_json::json!({"allOf": [{"type": "object", "properties": {"x": {"type": "string", "confluent:tags": ["PII"]}}}]}),
        serde_json::json!({"type": "object", "additionalProperties": {"type": "string", "confluent:tags": ["PII"]}}),
        serde_json::json!({"type": "object", "patternProperties": {"^x": {"type": "string", "confluent:tags": ["PII"]}}}),
        serde_json::json!({"type": "array", "items": {"type": "string", "confluent:tags": ["PII"]}}),
    ] {
        let schema = serde_json::json!({"type": "object", "properties": {"p": placement}});
        let e = Targets::resolve(&parse(&schema, &[]), &sel(&[], &["PII"])).unwrap_err();
        assert!(
            e.contains("not reachable through plain `properties`"),
            "{schema}: {e}"
        );
    }
    // Paths through them are refused: they name no plain property.
    let schema = serde_json::json!({"type": "object", "properties": {"p": {"oneOf": [
        {"type": "object", "properties": {"x": {"type": "string"}}}]}}});
    let e = Targets::resolve(&parse(&schema, &[]), &sel(&["p.x"], &[])).unwrap_err();
    assert!(e.contains("`p` has no property `x`"), "{e}");
    // A string property in `properties` beside `additionalProperties: true` is selectable.
    let schema = serde_json::json!({"type": "object", "additionalProperties": true,
        "properties": {"x": {"type": "string"}}});
    assert_eq!(names(&parse(&schema, &[]), &sel(&["x"], &[])), vec!["x"]);
}

#[test]
fn list_fields_follows_properties_and_refs_and_stops_at_recursion() {
    use crate::schema::ListedKind::{Other, Text};
    let customer: Value = serde_json::json!({
        "$id": "https://example.com/customer.json",
        "type": "object",
        "properties": {"email": {"type": "string", "confluent:tags": ["PII"]}}
    });
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ssn": {"type": ["string", "null"], "confluent:tags": ["PII"]},
            "buyer": {"$ref": "customer.json"},
            "node": {"$ref": "#/$defs/Node", "confluent:tags": ["TREE"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "card": {"type": "string", "confluent:tags": ["PII"]}}}},
            "broken": {"$ref": "#/$defs/Missing"}
        },
        "$defs": {"Node": {"type": "object", "properties": {
            "label": {"type": "string"},
            "next": {"$ref": "#/$defs/Node"}
        }}}
    });
    let schema = parse(&schema, &[("customer.json", &customer)]);
    let l = schema.list_fields();
    assert!(!l.truncated);
    let mut got: Vec<(String, String, crate::schema::ListedKind)> = l
        .fields
        .iter()
        .map(|f| (f.path.clone(), f.tags.join(","), f.kind))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want = [
        ("broken", "", Other),
        ("buyer", "", Other),
        ("buyer.email", "PII", Text),
        ("id", "", Other),
        // Array items are not listed: no path selects them.
        ("items", "", Other),
        ("node", "TREE", Other),
        ("node.label", "", Text),
        // `Node` inside itself is not entered again.
        ("node.next", "", Other),
        ("ssn", "PII", Text),
    ];
    let want: Vec<(String, String, crate::schema::ListedKind)> = want
        .iter()
        .map(|(p, t, k)| (p.to_string(), t.to_string(), *k))
        .collect();
    assert_eq!(got, want);
    // Every listed text path resolves as a selection; every other one is refused.
    for f in &l.fields {
        let r = Targets::resolve(&schema, &sel(&[&f.path], &[]));
        assert_eq!(r.is_ok(), f.kind != Other, "{}: {:?}", f.path, r.err());
    }
}
