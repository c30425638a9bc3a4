//! The OpenAPI document the hub serves at `/api/openapi.json` is valid OpenAPI 3.0: it parses
//! with the `openapiv3` data model, and the rules a parser does not check hold too (every
//! `$ref` resolves, every path parameter is declared and used, operation ids are unique, every
//! operation has a success response, security names exist, schemas are coherent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// The document as a client gets it: over HTTP from the real router (no database needed).
async fn served() -> Value {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let router =
        cartwise_cloud_hub::api::router(pool, cartwise_cloud_hub::api::ApiConfig::default());
    let response = router
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Every `$ref` in `value`, with where it was found.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    out.push((
                        at.to_owned(),
                        child.as_str().unwrap_or("<not a string>").to_owned(),
                    ));
                } else {
                    refs(child, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Resolves a local JSON pointer (`#/a/b`) in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

/// Checks a JSON schema (recursively) for what OpenAPI 3.0 requires; pushes problems.
fn check_schema(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    if map.contains_key("$ref") {
        return;
    }
    const TYPES: [&str; 7] = [
        "string", "integer", "number", "boolean", "array", "object", "null",
    ];
    if let Some(kind) = map.get("type") {
        match kind.as_str() {
            // OpenAPI 3.0 has no "null" type and no type arrays: nullable instead.
            Some(t) if TYPES[..6].contains(&t) => {}
            _ => problems.push(format!("{at}: type {kind} is not an OpenAPI 3.0 type")),
        }
    }
    if map.get("type").and_then(Value::as_str) == Some("array") && !map.contains_key("items") {
        problems.push(format!("{at}: an array schema needs items"));
    }
    if let Some(required) = map.get("required") {
        let names: Vec<&str> = required
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if names.is_empty() {
            problems.push(format!("{at}: required must be a non-empty list of names"));
        }
        if let Some(properties) = map.get("properties").and_then(Value::as_object) {
            for name in names {
                if !properties.contains_key(name) {
                    problems.push(format!("{at}: required {name:?} is not a property"));
                }
            }
        }
    }
    if let Some(values) = map.get("enum")
        && values.as_array().is_none_or(Vec::is_empty)
    {
        problems.push(format!("{at}: enum must be a non-empty list"));
    }
    for (low, high) in [
        ("minimum", "maximum"),
        ("minLength", "maxLength"),
        ("minItems", "maxItems"),
    ] {
        if let (Some(a), Some(b)) = (
            map.get(low).and_then(Value::as_f64),
            map.get(high).and_then(Value::as_f64),
        ) && a > b
        {
            problems.push(format!("{at}: {low} {a} is above {high} {b}"));
        }
    }
    if let Some(properties) = map.get("properties") {
        match properties.as_object() {
            Some(properties) => {
                for (name, child) in properties {
                    check_schema(child, &format!("{at}/properties/{name}"), problems);
                }
            }
            None => problems.push(format!("{at}: properties must be an object")),
        }
    }
    if let Some(items) = map.get("items") {
        check_schema(items, &format!("{at}/items"), problems);
    }
    if let Some(extra) = map.get("additionalProperties")
        && !extra.is_boolean()
    {
        check_schema(extra, &format!("{at}/additionalProperties"), problems);
    }
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[tokio::test]
async fn the_served_document_is_valid_openapi_3() {
    let doc = served().await;
    assert_eq!(doc, cartwise_cloud_hub::api::document(), "served = built");

    // The data model of OpenAPI 3.0 reads it.
    let parsed: openapiv3::OpenAPI =
        serde_json::from_value(doc.clone()).expect("parses as OpenAPI 3.0");
    assert!(parsed.openapi.starts_with("3.0."), "{}", parsed.openapi);
    assert!(!parsed.info.title.is_empty() && !parsed.info.version.is_empty());

    let mut problems = Vec::new();

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(!found.is_empty(), "the document uses references");
    for (at, reference) in &found {
        if resolve(&doc, reference).is_none() {
            problems.push(format!("{at}: $ref {reference} does not resolve"));
        }
    }

    let schemes: BTreeSet<&String> = doc["components"]["securitySchemes"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    let mut operation_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut templates: BTreeMap<String, String> = BTreeMap::new();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 30, "only {} paths", paths.len());
    for (path, item) in paths {
        if !path.starts_with('/') {
            problems.push(format!("{path}: a path starts with /"));
        }
        // Two templates that differ only in parameter names are the same path.
        let shape: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        if let Some(other) = templates.insert(shape, path.clone()) {
            problems.push(format!("{path} and {other} are the same template"));
        }
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let item = item.as_object().expect("path item");
        for (method, operation) in item {
            let at = format!("{method} {path}");
            if !METHODS.contains(&method.as_str()) {
                problems.push(format!("{at}: not an HTTP method"));
                continue;
            }
            match operation["operationId"].as_str() {
                Some(id) if !id.is_empty() => {
                    if let Some(first) = operation_ids.insert(id.to_owned(), at.clone()) {
                        problems.push(format!("{at}: operationId {id} also used by {first}"));
                    }
                }
                _ => problems.push(format!("{at}: no operationId")),
            }
            // Parameters: unique by (name, in); path ones required and in the template.
            let mut seen = BTreeSet::new();
            let mut declared_path = BTreeSet::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let parameter = match parameter.get("$ref").and_then(Value::as_str) {
                    Some(r) => resolve(&doc, r).unwrap_or(parameter),
                    None => parameter,
                };
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                let place = parameter["in"].as_str().unwrap_or_default().to_owned();
                if !["query", "header", "path", "cookie"].contains(&place.as_str()) {
                    problems.push(format!("{at}: parameter {name} is in {place:?}"));
                }
                if !seen.insert((name.clone(), place.clone())) {
                    problems.push(format!("{at}: parameter {name} in {place} declared twice"));
                }
                if place == "path" {
                    if parameter["required"] != Value::Bool(true) {
                        problems.push(format!("{at}: path parameter {name} must be required"));
                    }
                    declared_path.insert(name.clone());
                }
                match parameter.get("schema") {
                    Some(schema) => {
                        check_schema(schema, &format!("{at} parameter {name}"), &mut problems)
                    }
                    None => problems.push(format!("{at}: parameter {name} has no schema")),
                }
            }
            if declared_path != in_template {
                problems.push(format!(
                    "{at}: path parameters declared {declared_path:?}, template has {in_template:?}"
                ));
            }
            // Responses: present, one success, each described.
            let responses = operation["responses"].as_object();
            match responses {
                Some(responses) if !responses.is_empty() => {
                    if !responses.keys().any(|code| code.starts_with('2')) {
                        problems.push(format!("{at}: no 2xx response"));
                    }
                    for (code, response) in responses {
                        let ok_code = code == "default"
                            || (code.len() == 3
                                && code.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)));
                        if !ok_code {
                            problems.push(format!("{at}: response code {code:?}"));
                        }
                        let response = match response.get("$ref").and_then(Value::as_str) {
                            Some(r) => resolve(&doc, r).unwrap_or(response),
                            None => response,
                        };
                        if response["description"].as_str().is_none_or(str::is_empty) {
                            problems.push(format!("{at}: response {code} has no description"));
                        }
                        for (media, content) in
                            response["content"].as_object().into_iter().flatten()
                        {
                            if let Some(schema) = content.get("schema") {
                                check_schema(
                                    schema,
                                    &format!("{at} {code} {media}"),
                                    &mut problems,
                                );
                            }
                        }
                    }
                }
                _ => problems.push(format!("{at}: no responses")),
            }
            if let Some(body) = operation.get("requestBody") {
                match body["content"].as_object() {
                    Some(content) if !content.is_empty() => {
                        for (media, entry) in content {
                            if let Some(schema) = entry.get("schema") {
                                check_schema(schema, &format!("{at} body {media}"), &mut problems);
                            }
                        }
                    }
                    _ => problems.push(format!("{at}: a request body needs content")),
                }
                if ["get", "delete", "head"].contains(&method.as_str()) {
                    problems.push(format!("{at}: {method} takes no body"));
                }
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for name in requirement
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if !schemes.contains(name) {
                        problems.push(format!("{at}: security scheme {name} is not declared"));
                    }
                }
            }
            if operation["tags"].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{at}: no tag"));
            }
        }
    }
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        check_schema(schema, &format!("components/schemas/{name}"), &mut problems);
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn the_document_covers_the_new_routes() {
    let doc = served().await;
    for (path, method) in [
        ("/api/branches/{branch_id}/settings", "get"),
        ("/api/branches/{branch_id}/settings", "put"),
        ("/api/users", "get"),
        ("/api/users", "post"),
        ("/api/users/{id}", "get"),
        ("/api/users/{id}", "put"),
        ("/api/users/{id}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    // Passwords go in, never out.
    let user = &doc["paths"]["/api/users/{id}"]["get"]["responses"]["200"];
    assert!(!user.to_string().contains("password"), "{user}");
}

/// The checker itself notices what it is meant to notice.
#[test]
fn the_checker_rejects_broken_documents() {
    let mut problems = Vec::new();
    check_schema(
        &serde_json::json!({ "type": "object", "required": ["a"],
            "properties": { "b": { "type": "array" }, "c": { "type": "null" },
                            "d": { "type": "integer", "minimum": 5, "maximum": 1 } } }),
        "x",
        &mut problems,
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
    let doc = serde_json::json!({ "a": { "b": 1 } });
    assert!(resolve(&doc, "#/a/b").is_some());
    assert!(resolve(&doc, "#/a/c").is_none());
    assert!(resolve(&doc, "other.json#/a").is_none());
}
