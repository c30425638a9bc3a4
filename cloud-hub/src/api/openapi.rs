//! The OpenAPI 3.0 document, built from the same table that builds the router.
//!
//! Every route is added through [`ApiBuilder::add`] with its [`Op`] description, so a route
//! cannot exist without being documented; a test walks the document and calls every path.

use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use super::ApiState;

/// How an operation authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No credential.
    None,
    /// A user's session cookie or bearer token.
    User,
    /// An enrolled device's certificate signature.
    Device,
}

/// A query parameter: name, schema type (`string`, `integer`, `uuid`, `date-time`), meaning.
pub type QueryParam = (&'static str, &'static str, &'static str);

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// HTTP method.
    pub method: Method,
    /// Path under `/api`, axum syntax (`/chains/{id}`); path parameters are UUIDs.
    pub path: &'static str,
    /// Grouping tag.
    pub tag: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Authentication.
    pub auth: Auth,
    /// Query parameters (pagination added when `paged`).
    pub query: &'static [QueryParam],
    /// JSON body schema, if any.
    pub body: Option<Value>,
    /// The `data` schema of a success.
    pub data: Value,
    /// A paginated list.
    pub paged: bool,
    /// Success status.
    pub status: u16,
}

/// Collects routes and their descriptions.
pub struct ApiBuilder {
    router: Router<ApiState>,
    ops: Vec<Op>,
}

impl ApiBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            ops: Vec::new(),
        }
    }

    /// Adds a documented route.
    pub fn add(mut self, op: Op, route: MethodRouter<ApiState>) -> Self {
        self.router = self.router.route(op.path, route);
        self.ops.push(op);
        self
    }

    /// The router and the operations.
    pub fn finish(self) -> (Router<ApiState>, Vec<Op>) {
        (self.router, self.ops)
    }
}

impl Default for ApiBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn schema_of(kind: &str) -> Value {
    match kind {
        "uuid" => json!({ "type": "string", "format": "uuid" }),
        "date-time" => json!({ "type": "string", "format": "date-time" }),
        "integer" => json!({ "type": "integer", "minimum": 1 }),
        "boolean" => json!({ "type": "boolean" }),
        _ => json!({ "type": "string" }),
    }
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// The OpenAPI document of `ops`.
pub fn document(ops: &[Op]) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in ops {
        let mut parameters: Vec<Value> = path_params(op.path)
            .into_iter()
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true,
                        "schema": { "type": "string", "format": "uuid" } })
            })
            .collect();
        if op.paged {
            parameters.push(json!({ "name": "page", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1, "default": 1 } }));
            parameters.push(
                json!({ "name": "per_page", "in": "query", "required": false,
                "schema": { "type": "integer", "minimum": 1,
                            "maximum": super::page::PER_PAGE_MAX,
                            "default": super::page::PER_PAGE_DEFAULT } }),
            );
        }
        for (name, kind, description) in op.query {
            parameters.push(json!({ "name": name, "in": "query", "required": false,
                "description": description, "schema": schema_of(kind) }));
        }
        let success = if op.paged {
            json!({ "type": "object", "required": ["success", "data", "pagination"],
                "properties": { "success": { "type": "boolean" },
                    "data": { "type": "array", "items": op.data },
                    "pagination": { "$ref": "#/components/schemas/Pagination" } } })
        } else {
            json!({ "type": "object", "required": ["success", "data"],
                "properties": { "success": { "type": "boolean" }, "data": op.data } })
        };
        let mut responses = Map::new();
        responses.insert(
            op.status.to_string(),
            json!({ "description": "success",
                    "content": { "application/json": { "schema": success } } }),
        );
        for code in ["400", "401", "403", "404", "429"] {
            responses.insert(
                code.to_owned(),
                json!({ "$ref": format!("#/components/responses/E{code}") }),
            );
        }
        let mut operation = json!({
            "tags": [op.tag],
            "summary": op.summary,
            "operationId": format!("{}{}", op.method.as_str().to_lowercase(),
                op.path.replace(['/', '{', '}'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = &op.body {
            operation["requestBody"] = json!({ "required": true,
                "content": { "application/json": { "schema": body } } });
        }
        operation["security"] = match op.auth {
            Auth::None => json!([]),
            Auth::User => json!([{ "bearer": [] }, { "session": [] }]),
            Auth::Device => json!([{ "device": [] }]),
        };
        let entry = paths
            .entry(format!("/api{}", op.path))
            .or_insert_with(|| json!({}));
        entry[op.method.as_str().to_lowercase()] = operation;
    }
    let error_response = |description: &str| {
        json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "CartWise hub API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Chains, branches, devices, carts, rentals, telemetry, users and the audit log. \
                Lists take page and per_page; every error has one shape.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE },
                "device": { "type": "apiKey", "in": "header", "name": "x-cartwise-device-signature",
                    "description": "the device certificate (x-cartwise-device-cert, base64 DER) and a signature over the request" },
            },
            "schemas": {
                "Pagination": { "type": "object", "required": ["page", "per_page", "total", "total_pages"],
                    "properties": { "page": { "type": "integer" }, "per_page": { "type": "integer" },
                        "total": { "type": "integer" }, "total_pages": { "type": "integer" } } },
                "Error": { "type": "object", "required": ["success", "error"],
                    "properties": { "success": { "type": "boolean", "enum": [false] },
                        "error": { "type": "object",
                            "required": ["code", "message", "details", "timestamp", "requestId"],
                            "properties": { "code": { "type": "string" }, "message": { "type": "string" },
                                "details": { "nullable": true },
                                "timestamp": { "type": "string", "format": "date-time" },
                                "requestId": { "type": "string" } } } } },
            },
            "responses": {
                "E400": error_response("bad input"),
                "E401": error_response("not signed in"),
                "E403": error_response("forbidden"),
                "E404": error_response("not found"),
                "E429": error_response("rate limited"),
            },
        },
    })
}
