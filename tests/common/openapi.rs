//! Every answer the harness receives from a gateway is checked against the repository's
//! `openapi.yaml` (issue 16), so a test that asserts one field cannot let another field, or a
//! status, drift from what clients were promised:
//!
//! - the request's method and path (query stripped, percent-encoded segments as sent) select an
//!   operation by its path template, literal segments taking precedence over `{parameters}`;
//! - the status must be documented for that operation, or covered by a `default` or `4XX`-style
//!   response;
//! - the `Content-Type` must be one the response documents, and a JSON body must validate
//!   against its schema, `$ref`s into `components/schemas` resolved.
//!
//! Paths and methods the document has no operation for (an unknown route's 404, a wrong
//! method's 405) may only answer the gateway's JSON error shape `{error, message}`: the document
//! cannot say what they answer, and every error the gateway gives is that shape. The exceptions
//! are the documentation routes, which the document cannot describe since they serve it: see
//! [`DOCUMENTATION_ROUTES`].
//!
//! OpenAPI 3.0 schemas are not JSON Schema where they say `nullable: true`; [`Spec::parse`]
//! translates that (`type: T` becomes `type: [T, "null"]`, or the schema is joined with
//! `{type: "null"}` in an `anyOf` when it has no `type`), then compiles each response's schema
//! as JSON Schema draft 4, the draft OpenAPI 3.0 schemas follow (`exclusiveMinimum` as a
//! boolean, `$ref` siblings ignored).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::LazyLock;

use jsonschema::{Draft, Validator};
use serde_json::{Value, json};

use super::gateway::{Reply, repo};

/// `openapi.yaml` of the repository, parsed and compiled once per test process.
pub static COMMITTED: LazyLock<Spec> = LazyLock::new(|| {
    let path = repo().join("openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Spec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
});

/// Routes the gateway serves outside the document, each with the only answer it may give: the
/// document itself as JSON and its Swagger UI page. Any other answer there must be the error
/// shape.
pub const DOCUMENTATION_ROUTES: [(&str, &str, &str); 2] = [
    ("GET", "/openapi.json", "application/json"),
    ("GET", "/docs", "text/html"),
];

/// A parsed OpenAPI document, every response schema compiled.
pub struct Spec {
    /// Operations by path template, then by upper-case method.
    paths: Vec<(Template, BTreeMap<String, Operation>)>,
    /// The error shape answers without an operation must have.
    error_shape: Validator,
}

/// A path template, split at `/`.
struct Template {
    /// As the document writes it, for messages.
    text: String,
    /// `Some(literal)` or `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
}

impl Template {
    fn new(text: &str) -> Template {
        let segments = text
            .split('/')
            .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_string()))
            .collect();
        Template {
            text: text.to_string(),
            segments,
        }
    }

    /// How many literal segments `path` matched, or `None` when it does not match; a parameter
    /// takes one non-empty segment.
    fn matches(&self, path: &str) -> Option<usize> {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut literals = 0;
        for (template, segment) in self.segments.iter().zip(segments) {
            match template {
                Some(literal) if literal == segment => literals += 1,
                None if !segment.is_empty() => {}
                _ => return None,
            }
        }
        Some(literals)
    }
}

/// What one operation may answer.
struct Operation {
    /// By status key as the document writes it (`200`, `4XX`, `default`).
    responses: BTreeMap<String, Response>,
}

/// One documented response.
struct Response {
    /// By media type essence (`application/json`, no parameters): the compiled schema of a JSON
    /// media type that has one, `None` for the others.
    content: BTreeMap<String, Option<Validator>>,
}

/// The media type without its parameters, lower case: `application/json; charset=utf-8` is
/// `application/json`.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type essence is JSON.
fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

impl Spec {
    /// Parses an OpenAPI 3.0 document (YAML or JSON) and compiles every response schema; `Err`
    /// names what does not compile.
    pub fn parse(text: &str) -> Result<Spec, String> {
        let mut document: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        translate_nullable(&mut document);
        let components = document.get("components").cloned().unwrap_or_else(|| json!({}));
        let mut paths = Vec::new();
        for (template, item) in document["paths"].as_object().ok_or("no paths")? {
            let mut operations = BTreeMap::new();
            for (method, operation) in item.as_object().ok_or_else(|| format!("{template}: not a path item"))? {
                let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                let mut compiled = BTreeMap::new();
                for (status, response) in responses {
                    let mut content = BTreeMap::new();
                    for (media_type, media) in response["content"].as_object().into_iter().flatten() {
                        let essence = essence(media_type);
                        let validator = match media.get("schema") {
                            Some(schema) if is_json(&essence) => Some(compile(schema, &components).map_err(|e| {
                                format!("{} {template} {status} {media_type}: {e}", method.to_uppercase())
                            })?),
                            _ => None,
                        };
                        content.insert(essence, validator);
                    }
                    compiled.insert(status.clone(), Response { content });
                }
                operations.insert(method.to_uppercase(), Operation { responses: compiled });
            }
            paths.push((Template::new(template), operations));
        }
        let error_shape = compile(
            &json!({
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            }),
            &json!({}),
        )?;
        Ok(Spec { paths, error_shape })
    }

    /// Checks `reply` to `method path` (a query is ignored); `Err` names the method, path,
    /// status, what does not match (with the JSON pointer of each failing value) and the body.
    pub fn check(&self, method: &str, path: &str, reply: &Reply) -> Result<(), String> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        // The results UI's home is `/ui/` to browsers and `/ui` in the document (the gateway
        // reads the one as the other: `api::routes::UI_HOME`).
        let path = if path == "/ui/" { "/ui" } else { path };
        let operation = self
            .paths
            .iter()
            .filter_map(|(template, operations)| Some((template.matches(path)?, template, operations)))
            .max_by_key(|(literals, _, _)| *literals)
            .and_then(|(_, template, operations)| Some((template, operations.get(method)?)));
        let (operation, outcome) = match operation {
            Some((template, operation)) => (
                format!("operation {method} {}", template.text),
                check_operation(operation, reply),
            ),
            None => ("no operation".to_string(), self.check_undocumented(method, path, reply)),
        };
        outcome.map_err(|what| {
            format!(
                "{method} {path}: {} (Content-Type {:?}) does not match openapi.yaml ({operation}): {what}\nbody: {}",
                reply.status, reply.content_type, reply.body
            )
        })
    }

    /// A reply where the document has no operation: a documentation route's own answer, or the
    /// error shape.
    fn check_undocumented(&self, method: &str, path: &str, reply: &Reply) -> Result<(), String> {
        let documentation = DOCUMENTATION_ROUTES.iter().find(|(m, p, _)| *m == method && *p == path);
        if let Some((_, _, media_type)) = documentation
            && reply.status == 200
        {
            return if essence(&reply.content_type) == *media_type {
                Ok(())
            } else {
                Err(format!("{path} serves {media_type}"))
            };
        }
        let what = "only the error shape {error, message} may answer there".to_string();
        if !is_json(&essence(&reply.content_type)) {
            return Err(format!("{what}, as JSON"));
        }
        validate(&self.error_shape, &reply.body).map_err(|e| format!("{what}: {e}"))
    }
}

/// Checks the status, content type and body of `reply` against `operation`.
fn check_operation(operation: &Operation, reply: &Reply) -> Result<(), String> {
    let response = operation
        .responses
        .get(&reply.status.to_string())
        .or_else(|| operation.responses.get(&format!("{}XX", reply.status / 100)))
        .or_else(|| operation.responses.get("default"))
        .ok_or_else(|| {
            let documented: Vec<&String> = operation.responses.keys().collect();
            format!("status {} is not documented (documented: {documented:?})", reply.status)
        })?;
    check_content(response, reply)
}

/// Checks the content type and body of `reply` against `response`.
fn check_content(response: &Response, reply: &Reply) -> Result<(), String> {
    if response.content.is_empty() {
        return if reply.body.is_empty() {
            Ok(())
        } else {
            Err("documented without a body".to_string())
        };
    }
    let essence = essence(&reply.content_type);
    let validator = response.content.get(&essence).ok_or_else(|| {
        let documented: Vec<&String> = response.content.keys().collect();
        format!("content type {essence:?} is not documented (documented: {documented:?})")
    })?;
    match validator {
        Some(validator) => validate(validator, &reply.body),
        None => Ok(()),
    }
}

/// Validates `body` as JSON; `Err` lists every failing value as `pointer: problem`.
fn validate(validator: &Validator, body: &str) -> Result<(), String> {
    let body: Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let mut errors = String::new();
    for error in validator.iter_errors(&body) {
        let pointer = error.instance_path().to_string();
        let pointer = if pointer.is_empty() {
            "(the body)".to_string()
        } else {
            pointer
        };
        let _ = write!(errors, "\n  at {pointer}: {error}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("the body does not validate against the schema:{errors}"))
    }
}

/// Compiles `schema` with the document's `components` beside it, so that its `$ref`s
/// (`#/components/schemas/…`) resolve within the one compiled document.
fn compile(schema: &Value, components: &Value) -> Result<Validator, String> {
    let document = json!({ "allOf": [schema], "components": components });
    jsonschema::options()
        .with_draft(Draft::Draft4)
        .build(&document)
        .map_err(|e| format!("schema does not compile: {e}"))
}

/// Rewrites every OpenAPI 3.0 `nullable: true` as the JSON Schema that means the same: `null` is
/// one more allowed type (and enum value), or, for a schema without a `type` (a `$ref` or an
/// `allOf`), an alternative.
fn translate_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(translate_nullable);
            if map.get("nullable").is_some_and(Value::is_boolean) {
                let nullable = map.remove("nullable") == Some(Value::Bool(true));
                if !nullable {
                    return;
                }
                match map.get("type").cloned() {
                    Some(Value::String(kind)) => {
                        map.insert("type".into(), json!([kind, "null"]));
                        if let Some(Value::Array(values)) = map.get_mut("enum") {
                            values.push(Value::Null);
                        }
                    }
                    _ => {
                        let schema = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([{"type": "null"}, schema]));
                    }
                }
            }
        }
        Value::Array(values) => values.iter_mut().for_each(translate_nullable),
        _ => {}
    }
}

/// [`Spec::check`] against [`COMMITTED`].
pub fn check(method: &str, path: &str, reply: &Reply) -> Result<(), String> {
    COMMITTED.check(method, path, reply)
}
