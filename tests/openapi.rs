//! The harness's check of answers against `openapi.yaml` (`common/openapi.rs`), itself checked:
//! on a small document made for it, that each rule it promises refuses what it must and lets
//! through what it must, and that the committed document compiles.

mod common;

use common::gateway::Reply;
use common::openapi::{COMMITTED, Spec};

/// A document with one of each thing the check handles: `$ref`s, `nullable` on a typed, an
/// enumerated and an `allOf` schema, a literal path beside a templated one, a `default` and a
/// `4XX` response, one without a body, and a text one.
const DOCUMENT: &str = r##"
openapi: 3.0.0
info:
  title: test
  version: '1'
paths:
  /things/{id}:
    get:
      responses:
        '200':
          description: A thing.
          content:
            application/json; charset=utf-8:
              schema:
                $ref: '#/components/schemas/Thing'
        '404':
          description: No such thing.
          content:
            application/json; charset=utf-8:
              schema:
                $ref: '#/components/schemas/Error'
  /things/special:
    get:
      responses:
        default:
          description: Anything, as text.
          content:
            text/plain; charset=utf-8:
              schema:
                type: string
  /things:
    post:
      responses:
        '204':
          description: Made.
        4XX:
          description: Refused.
          content:
            application/json; charset=utf-8:
              schema:
                $ref: '#/components/schemas/Error'
components:
  schemas:
    Thing:
      type: object
      required: [name, note, kind, parent]
      properties:
        name:
          type: string
        note:
          type: string
          nullable: true
        kind:
          type: string
          enum: [a, b]
          nullable: true
        parent:
          nullable: true
          allOf:
          - $ref: '#/components/schemas/Parent'
        count:
          type: integer
          format: uint32
    Parent:
      type: object
      required: [id]
      properties:
        id:
          type: string
    Error:
      type: object
      required: [error, message]
      properties:
        error:
          type: string
        message:
          type: string
"##;

fn spec() -> Spec {
    Spec::parse(DOCUMENT).expect("the test document compiles")
}

fn reply(status: u16, content_type: &str, body: &str) -> Reply {
    Reply {
        status,
        content_type: content_type.to_string(),
        request_id: None,
        body: body.to_string(),
    }
}

fn json(status: u16, body: &str) -> Reply {
    reply(status, "application/json; charset=utf-8", body)
}

/// Asserts `check` refused, with a message naming each of `parts`; returns the message.
fn refused(check: Result<(), String>, parts: &[&str]) -> String {
    let message = check.expect_err("refused");
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    message
}

const THING: &str = r#"{"name": "x", "note": "n", "kind": "a", "parent": {"id": "p"}, "count": 3}"#;

#[test]
fn a_body_matching_its_schema_passes_with_nulls_where_nullable() {
    let spec = spec();
    spec.check("GET", "/things/7", &json(200, THING)).expect("valid");
    let nulls = r#"{"name": "x", "note": null, "kind": null, "parent": null}"#;
    spec.check("GET", "/things/7", &json(200, nulls))
        .expect("nullable fields take null");
}

#[test]
fn a_failing_value_is_named_by_its_pointer_with_method_path_status_and_body() {
    let spec = spec();
    let body = r#"{"name": null, "note": "n", "kind": "a", "parent": {"id": "p"}}"#;
    let message = refused(
        spec.check("GET", "/things/7", &json(200, body)),
        &["GET /things/7", "200", "/name", "null", body],
    );
    assert!(message.contains("\"string\""), "names the type wanted: {message}");
    // Each translated `nullable` still refuses what is neither null nor the schema.
    for (body, pointer) in [
        (r#"{"name": "x", "note": 5, "kind": "a", "parent": null}"#, "/note"),
        (r#"{"name": "x", "note": null, "kind": "c", "parent": null}"#, "/kind"),
        (r#"{"name": "x", "note": null, "kind": null, "parent": {}}"#, "/parent"),
        (
            r#"{"name": "x", "note": null, "kind": null, "parent": null, "count": "3"}"#,
            "/count",
        ),
        (r#"{"name": "x", "note": null, "kind": null}"#, "parent"),
    ] {
        refused(spec.check("GET", "/things/7", &json(200, body)), &[pointer]);
    }
    refused(spec.check("GET", "/things/7", &json(200, "{")), &["not JSON"]);
}

#[test]
fn paths_match_templates_with_queries_stripped_and_literals_first() {
    let spec = spec();
    spec.check("GET", "/things/a%2Fb?x=1&y", &json(200, THING))
        .expect("one encoded segment, query ignored");
    refused(spec.check("GET", "/things/", &json(200, THING)), &["no operation"]);
    refused(
        spec.check("GET", "/things/7/more", &json(200, THING)),
        &["no operation"],
    );
    // `/things/special` is its own operation, not `/things/{id}`, so its `default` covers a 500.
    spec.check(
        "GET",
        "/things/special",
        &reply(500, "text/plain; charset=utf-8", "oops"),
    )
    .expect("default response");
}

#[test]
fn a_status_must_be_documented_or_covered_by_default_or_a_range() {
    let spec = spec();
    refused(
        spec.check("GET", "/things/7", &json(415, r#"{"error": "e", "message": "m"}"#)),
        &[
            "status 415 is not documented",
            "operation GET /things/{id}",
            "\"200\"",
            "\"404\"",
        ],
    );
    spec.check(
        "POST",
        "/things",
        &json(413, r#"{"error": "too_large", "message": "m"}"#),
    )
    .expect("4XX covers 413");
    refused(spec.check("POST", "/things", &json(500, "{}")), &["status 500"]);
}

#[test]
fn content_types_and_bodies_must_be_the_documented_ones() {
    let spec = spec();
    spec.check("POST", "/things", &reply(204, "", "")).expect("no body");
    refused(
        spec.check("POST", "/things", &json(204, "{}")),
        &["documented without a body"],
    );
    refused(
        spec.check("GET", "/things/7", &reply(200, "text/plain", THING)),
        &["content type \"text/plain\" is not documented"],
    );
}

#[test]
fn answers_without_an_operation_may_only_be_the_error_shape() {
    let spec = spec();
    let error = r#"{"error": "not_found", "message": "no route"}"#;
    spec.check("GET", "/nothing", &json(404, error)).expect("unknown route");
    spec.check("DELETE", "/things/7", &json(405, error))
        .expect("unknown method");
    refused(
        spec.check("GET", "/nothing", &json(404, r#"{"error": "x"}"#)),
        &["message"],
    );
    refused(
        spec.check("GET", "/nothing", &reply(404, "text/plain", "not found")),
        &["as JSON"],
    );
    // The documentation routes serve the document and its viewer, and nothing else on success.
    spec.check("GET", "/openapi.json", &json(200, "{}"))
        .expect("the document");
    spec.check("GET", "/docs", &reply(200, "text/html; charset=utf-8", "<html>"))
        .expect("its viewer");
    refused(
        spec.check("GET", "/docs", &json(200, "{}")),
        &["/docs serves text/html"],
    );
}

#[test]
fn the_committed_spec_compiles_and_documents_health() {
    COMMITTED
        .check("GET", "/health", &json(200, r#"{"status": "ok"}"#))
        .expect("GET /health");
    refused(COMMITTED.check("GET", "/health", &json(200, "{}")), &["status"]);
}

/// YAML mapping keys are unique: a document that says a key twice (a status, a field) is read
/// differently by different tools, and the harness sees only one of the two.
#[test]
fn the_committed_spec_says_each_key_once() {
    let text = std::fs::read_to_string(common::gateway::repo().join("openapi.yaml")).expect("openapi.yaml");
    if let Err(e) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
        panic!("openapi.yaml: {e}");
    }
    assert!(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("a: 1\na: 2\n").is_err(),
        "the parser refuses a key said twice"
    );
}
