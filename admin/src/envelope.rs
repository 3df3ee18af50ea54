//! Response shapes of APISIX's Admin API v3 (spec §2.2), quirks included: the
//! 404 body uses `message` rather than `error_msg`, DELETE answers `"deleted":"1"`
//! as a string, and 401s carry a `description`. Clients such as ADC and the
//! ingress controller parse these exact shapes, so they are mirrored.

use crate::store::Entry;
use serde_json::{json, Value};

/// What the handler answers. The server adds the common headers (content type,
/// server, API version, CORS).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Headers beyond the common ones (e.g. `Access-Control-Allow-Methods`).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: Value) -> Response {
        Response { status, body: body.to_string(), headers: Vec::new() }
    }

    /// A body that is not JSON: APISIX answers the page_size error this way.
    pub fn text(status: u16, body: &str) -> Response {
        Response { status, body: body.to_string(), headers: Vec::new() }
    }

    pub fn empty(status: u16) -> Response {
        Response::text(status, "")
    }

    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, json!({ "error_msg": message.into() }))
    }

    /// `{"error_msg": "invalid configuration: <msg>"}`, the schema failure shape.
    pub fn invalid(message: &str) -> Response {
        Response::error(400, format!("invalid configuration: {message}"))
    }

    pub fn key_not_found() -> Response {
        Response::json(404, json!({"message": "Key not found"}))
    }

    pub fn unauthorized(description: &str) -> Response {
        Response::json(401, json!({"error_msg": "failed to check token", "description": description}))
    }

    /// Nothing routes here (APISIX answers with nginx's bare 404).
    pub fn not_found() -> Response {
        Response::error(404, "404 Not Found")
    }
}

/// `/apisix/<type>/<id>`, the etcd key clients see.
pub fn key(kind: &str, id: &str) -> String {
    format!("/apisix/{kind}/{id}")
}

/// `{"key": ..., "value": ...}`: answers to PUT, POST and PATCH.
pub fn written(status: u16, kind: &str, id: &str, value: &Value) -> Response {
    Response::json(status, json!({"key": key(kind, id), "value": value}))
}

/// One item as GET shows it, with the etcd revisions.
pub fn node(kind: &str, id: &str, entry: &Entry, value: Value) -> Value {
    json!({
        "key": key(kind, id),
        "value": value,
        "createdIndex": entry.created_index,
        "modifiedIndex": entry.modified_index,
    })
}

pub fn deleted(kind: &str, id: &str) -> Response {
    Response::json(200, json!({"deleted": "1", "key": key(kind, id)}))
}
