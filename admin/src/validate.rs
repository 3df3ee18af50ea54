//! Write-time checks shared by PUT, POST and PATCH (spec §2.3), in APISIX's
//! order: body present, id rules, forbidden server-managed fields, the
//! object's own rules (strait_engine::model, the one definition of a valid
//! object), then references to other objects in the store.

use crate::config_store::ConfigStore;
use crate::envelope::Response;
use crate::kind::Kind;
use serde_json::{Map, Value};
use strait_engine::model::json::id_string;
use strait_engine::model::{Service, StreamRoute, Upstream};

/// How an id is expected for this write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRule<'a> {
    /// PUT and PATCH: from the URL, else (PUT to the collection) from the body.
    Required(Option<&'a str>),
    /// POST: the server generates it, so the client must not send one.
    Forbidden,
}

/// A checked object ready to store: its key id and the value with `id` set.
pub struct Checked {
    pub id: Option<String>,
    pub value: Map<String, Value>,
}

/// Validates `conf` for a write of `kind`. `allow_time` is true for PATCH,
/// where the stored timestamps come back in the merged object.
pub fn check_conf(
    kind: Kind,
    conf: Option<Value>,
    id_rule: IdRule<'_>,
    allow_time: bool,
    store: &mut dyn ConfigStore,
) -> Result<Checked, Response> {
    let conf = match conf {
        None | Some(Value::Null) => return Err(Response::error(400, "missing configurations")),
        Some(Value::Object(object)) => object,
        Some(other) => return Err(Response::invalid(&strait_engine::model::json::wrong_type("object", &other))),
    };
    let mut conf = conf;
    let id = match id_rule {
        IdRule::Forbidden => {
            if conf.contains_key("id") {
                return Err(wrong_id_not_needed(kind));
            }
            None
        }
        IdRule::Required(url_id) => {
            let body_id = conf.get("id");
            match (url_id, body_id) {
                (None, None) => return Err(Response::error(400, format!("missing {} id", kind.label()))),
                (Some(url), Some(body)) if id_string(body).as_deref() != Some(url) => {
                    return Err(Response::error(400, format!("wrong {} id", kind.label())))
                }
                // The URL's id is stored as a string; a body-only id keeps the
                // JSON type the client used (spec §2.2).
                (Some(url), _) => {
                    conf.insert("id".into(), Value::String(url.to_string()));
                }
                (None, Some(_)) => {}
            }
            // A malformed id fails the model's id check below; a non-scalar
            // one gets the same message there.
            conf.get("id").and_then(id_string)
        }
    };
    if !allow_time {
        check_forbidden_properties(&conf)?;
    }
    let value = Value::Object(conf);
    check_model(kind, id.as_deref().unwrap_or(""), &value)?;
    check_references(kind, &value, store)?;
    let Value::Object(value) = value else { unreachable!("built from an object above") };
    Ok(Checked { id, value })
}

pub fn wrong_id_not_needed(kind: Kind) -> Response {
    Response::error(400, format!("wrong {} id, do not need it", kind.label()))
}

/// `create_time`/`update_time` are server-managed; APISIX's message has two
/// spaces after the colon, which clients may match on (spec §8.7).
fn check_forbidden_properties(conf: &Map<String, Value>) -> Result<(), Response> {
    const FORBIDDEN: [&str; 2] = ["create_time", "update_time"];
    let nested = |name: &str| conf.get(name).and_then(Value::as_object);
    let mut found = FORBIDDEN.iter().find(|p| conf.contains_key(**p)).map(|p| p.to_string());
    for parent in ["upstream", "plugins"] {
        if found.is_none() {
            found = nested(parent)
                .and_then(|o| FORBIDDEN.iter().find(|p| o.contains_key(**p)))
                .map(|p| format!("{parent}.{p}"));
        }
    }
    match found {
        Some(name) => Err(Response::error(400, format!("the property is forbidden:  {name}"))),
        None => Ok(()),
    }
}

fn check_model(kind: Kind, id: &str, value: &Value) -> Result<(), Response> {
    let result = match kind {
        Kind::StreamRoutes => StreamRoute::from_json(id, value).map(drop),
        Kind::Upstreams => Upstream::from_json(value).map(drop),
        Kind::Services => Service::from_json(value).map(drop),
        Kind::Ssls => strait_engine::tls::certs::check_ssl(value, &strait_engine::tls::TlsEnv::default()),
    };
    result.map_err(|message| model_error(&message))
}

/// APISIX prefixes schema failures with `invalid configuration: ` but reports
/// its later semantic checks bare (`{"error_msg":"invalid remote_addr: :/8"}`,
/// `unknown plugin [x]`, `missing key`); the engine phrases both without the
/// prefix, so the split is made here.
fn model_error(message: &str) -> Response {
    const BARE: [&str; 7] = [
        "invalid remote_addr: ",
        "invalid server_addr: ",
        "unknown plugin [",
        "mismatched number of certs and keys",
        "failed to parse ",
        "failed to handle cert-key pair",
        "failed to validate client_cert",
    ];
    if message == "missing key" || BARE.iter().any(|p| message.starts_with(p)) {
        Response::error(400, message)
    } else {
        Response::invalid(message)
    }
}

/// Objects named by id must exist at write time (spec §2.4 steps 2-3).
fn check_references(kind: Kind, value: &Value, store: &mut dyn ConfigStore) -> Result<(), Response> {
    let mut exists = |kind: Kind, field: &str, inner: &Value| -> Result<(), Response> {
        let Some(id) = inner.get(field).and_then(id_string) else {
            return Ok(());
        };
        match store.get(kind.segment(), &id) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(Response::error(503, e.to_string())),
        }
        Err(Response::error(
            400,
            format!("failed to fetch {label} info by {label} id [{id}], response code: 404", label = kind.label()),
        ))
    };
    match kind {
        Kind::StreamRoutes | Kind::Services => {
            exists(Kind::Upstreams, "upstream_id", value)?;
            if kind == Kind::StreamRoutes {
                exists(Kind::Services, "service_id", value)?;
            }
            if let Some(upstream) = value.get("upstream") {
                check_client_cert(upstream, store)?;
            }
        }
        Kind::Upstreams => check_client_cert(value, store)?,
        Kind::Ssls => {}
    }
    Ok(())
}

/// `tls.client_cert_id` must name an ssl object of `type: client` (spec §2.5).
/// APISIX skips this for inline upstreams of stream routes; Strait does not
/// (spec §8.2).
fn check_client_cert(upstream: &Value, store: &mut dyn ConfigStore) -> Result<(), Response> {
    let Some(id) = upstream.get("tls").and_then(|tls| tls.get("client_cert_id")).and_then(id_string) else {
        return Ok(());
    };
    let prefix = format!("failed to fetch ssl info by ssl id [{id}]");
    let ssl = store.get(Kind::Ssls.segment(), &id).map_err(|e| Response::error(503, e.to_string()))?;
    match ssl {
        None => Err(Response::error(400, format!("{prefix}, response code: 404"))),
        Some(entry) if entry.value.get("type").and_then(Value::as_str) != Some("client") => {
            Err(Response::error(400, format!("{prefix}, wrong ssl type")))
        }
        Some(_) => Ok(()),
    }
}
