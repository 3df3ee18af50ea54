//! The `service` object (spec §3.5): what a stream route can inherit through
//! `service_id`. HTTP-only fields (`hosts`, `script`, `enable_websocket`) are
//! accepted so an APISIX service can be stored as it is, and ignored.

use super::json::{self, in_property, wrong_type};
use super::upstream::Upstream;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<String>,
}

const SERVICE_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "plugins",
    "upstream",
    "upstream_id",
    "script",
    "enable_websocket",
    "hosts",
];

impl Service {
    /// Parses and validates a service object.
    pub fn from_json(value: &Value) -> Result<Service, String> {
        let object = json::as_object(value)?;
        json::only_properties(object, SERVICE_PROPERTIES)?;
        json::check_common_fields(object)?;
        let upstream = match object.get("upstream") {
            Some(value) => Some(Upstream::from_json(value).map_err(|e| in_property("upstream", e))?),
            None => None,
        };
        if let Some(plugins) = object.get("plugins") {
            let plugins = json::as_object(plugins).map_err(|e| in_property("plugins", e))?;
            // As for stream routes: no plugin is known yet, so naming one is an
            // error rather than a setting that silently does nothing.
            if let Some(name) = plugins.keys().min() {
                return Err(format!("unknown plugin [{name}]"));
            }
        }
        json::string_field(object, "script", 1, 102_400)?;
        if let Some(flag) = object.get("enable_websocket") {
            if !flag.is_boolean() {
                return Err(in_property("enable_websocket", wrong_type("boolean", flag)));
            }
        }
        if let Some(hosts) = object.get("hosts") {
            let items = hosts.as_array().ok_or_else(|| in_property("hosts", wrong_type("array", hosts)))?;
            if items.is_empty() {
                return Err(in_property("hosts", "expect array to have at least 1 items".into()));
            }
            for (index, item) in items.iter().enumerate() {
                let ok = item.as_str().is_some_and(json::is_host_def);
                if !ok {
                    return Err(in_property("hosts", format!("failed to validate item {}: invalid host", index + 1)));
                }
            }
        }
        Ok(Service { upstream, upstream_id: object.get("upstream_id").and_then(json::id_string) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_parse_and_name_their_problems() {
        let s = Service::from_json(&json!({"upstream_id": 1, "name": "svc"})).unwrap();
        assert_eq!(s.upstream_id.as_deref(), Some("1"));
        assert!(Service::from_json(&json!({"upstream": {"nodes": {"a:1": 1}}})).unwrap().upstream.is_some());
        let cases = [
            (json!({"bogus": 1}), "additional properties forbidden, found bogus"),
            (json!({"plugins": {"limit-count": {}}}), "unknown plugin [limit-count]"),
            (
                json!({"upstream": {}}),
                "property \"upstream\" validation failed: value should match only one schema, but matches none",
            ),
            (json!({"hosts": []}), "property \"hosts\" validation failed: expect array to have at least 1 items"),
            (json!([]), "wrong type: expected object, got array"),
        ];
        for (input, expected) in cases {
            assert_eq!(Service::from_json(&input).unwrap_err(), expected, "for {input}");
        }
    }
}
