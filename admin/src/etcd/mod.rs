//! Shared configuration on etcd, the way APISIX nodes share theirs.
//!
//! - [`EtcdStore`]: the Admin API's [`ConfigStore`](crate::ConfigStore) on
//!   etcd (the admin thread's own connection).
//! - [`Syncer`](sync::Syncer): the sans-IO state machine that keeps a node's
//!   object set in step with etcd (load, watch, compaction, wiped etcd,
//!   outages); unit-tested with scripted gateway answers.
//! - [`node`]: the driver that runs a Syncer with blocking I/O on one
//!   dedicated config thread and publishes what it reads.
//! - [`http`], [`gateway`]: the small HTTP/1.1 client and the v3 JSON gateway's
//!   encoding (etcd.md §2); [`tls`]: TLS to `https://` hosts (verification,
//!   client certificates).
//!
//! Keys and values are APISIX's (`<prefix>/stream_routes/<id>`, ...,
//! `<prefix>/gen_id`), so a Strait node can serve from an APISIX etcd and
//! APISIX's tools can drive Strait.

pub mod gateway;
pub mod http;
pub mod node;
mod store;
pub mod sync;
pub mod tls;

#[cfg(test)]
mod tests;

pub use store::EtcdStore;

use crate::kind::Kind;
use serde_json::Value;
use strait_engine::model::{Service, Ssl, StreamRoute, Upstream};

/// Checks one object read from etcd (or the standalone file) the way the
/// data plane must: a JSON object, `id` forced to the key's id (as APISIX's
/// data plane does), valid by the engine's rules. With `strip_plugins`
/// (etcd mode, as APISIX), stream plugins Strait does not have are dropped
/// with a warning instead of making the object invalid.
pub(crate) fn check_object(kind: Kind, id: &str, raw: &[u8], strip_plugins: bool) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON ({e})"))?;
    check_value(kind, id, value, strip_plugins)
}

pub(crate) fn check_value(kind: Kind, id: &str, value: Value, strip_plugins: bool) -> Result<Value, String> {
    let Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    object.insert("id".into(), Value::String(id.to_string()));
    if strip_plugins && matches!(kind, Kind::StreamRoutes | Kind::Services) {
        if let Some(plugins) = object.remove("plugins") {
            let names: Vec<&String> = plugins.as_object().map(|p| p.keys().collect()).unwrap_or_default();
            if !names.is_empty() {
                log::warn!(
                    "{} [{id}] uses plugins {names:?} that Strait does not have: serving it without them",
                    kind.label()
                );
            }
        }
    }
    let value = Value::Object(object);
    let checked = match kind {
        Kind::StreamRoutes => StreamRoute::from_json(id, &value).map(drop),
        Kind::Upstreams => Upstream::from_json(&value).map(drop),
        Kind::Services => Service::from_json(&value).map(drop),
        Kind::Ssls => Ssl::from_json(&value).map(drop),
    };
    checked.map(|()| value)
}

/// Gathers objects into the engine's [`Resources`](strait_engine::Resources).
pub(crate) fn resources_of(objects: impl IntoIterator<Item = (Kind, String, Value)>) -> strait_engine::Resources {
    let mut resources = strait_engine::Resources::default();
    for (kind, id, value) in objects {
        match kind {
            Kind::StreamRoutes => resources.stream_routes.push((id, value)),
            Kind::Upstreams => resources.upstreams.push((id, value)),
            Kind::Services => resources.services.push((id, value)),
            Kind::Ssls => resources.ssls.push((id, value)),
        }
    }
    resources
}
