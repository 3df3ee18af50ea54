//! The `stream_route` object (spec §3.1).

use super::ip::IpMatch;
use super::json::{self, in_property, wrong_type};
use super::upstream::Upstream;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct StreamRoute {
    /// The key suffix: `"1"` for `/apisix/stream_routes/1`.
    pub id: String,
    pub remote_addr: Option<IpMatch>,
    pub server_addr: Option<IpMatch>,
    pub server_port: Option<u16>,
    /// Lower-cased SNI patterns (`sni` or `snis`); empty = no SNI condition.
    pub snis: Vec<String>,
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<String>,
    pub service_id: Option<String>,
    /// Strait extension (spec §4.6.4): on a listener with both `tls` and
    /// `tls_passthrough`, this route forwards the TLS bytes untouched.
    pub tls_passthrough: bool,
}

const ROUTE_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "remote_addr",
    "server_addr",
    "server_port",
    "sni",
    "snis",
    "upstream",
    "upstream_id",
    "service_id",
    "plugins",
    "protocol",
    "tls_passthrough",
];

impl StreamRoute {
    /// Parses and validates a stream route. `id` is the key suffix the object is
    /// stored under (the body's own `id`, if any, has been checked against it).
    pub fn from_json(id: &str, value: &Value) -> Result<StreamRoute, String> {
        let object = json::as_object(value)?;
        json::only_properties(object, ROUTE_PROPERTIES)?;
        json::check_common_fields(object)?;

        let remote_addr = ip_field(object, "remote_addr")?;
        let server_addr = ip_field(object, "server_addr")?;
        let server_port = json::integer_field(object, "server_port", 1, 65535)?.map(|p| p as u16);

        let mut snis = Vec::new();
        if let Some(sni) = object.get("sni") {
            snis.push(host_pattern(sni).map_err(|e| in_property("sni", e))?);
        }
        if let Some(list) = object.get("snis") {
            if object.contains_key("sni") {
                return Err("value wasn't supposed to match schema: sni and snis cannot be used together".into());
            }
            let items = list.as_array().ok_or_else(|| in_property("snis", wrong_type("array", list)))?;
            if items.is_empty() {
                return Err(in_property("snis", "expect array to have at least 1 items".into()));
            }
            for (index, item) in items.iter().enumerate() {
                let pattern = host_pattern(item)
                    .map_err(|e| in_property("snis", format!("failed to validate item {}: {e}", index + 1)))?;
                // A lone `*` in `snis` means no SNI restriction (spec §3.1).
                if pattern == "*" {
                    snis.clear();
                    break;
                }
                snis.push(pattern);
            }
        }

        let upstream = match object.get("upstream") {
            Some(value) => Some(Upstream::from_json(value).map_err(|e| in_property("upstream", e))?),
            None => None,
        };
        let upstream_id = object.get("upstream_id").and_then(json::id_string);
        let service_id = object.get("service_id").and_then(json::id_string);

        if let Some(plugins) = object.get("plugins") {
            let plugins = json::as_object(plugins).map_err(|e| in_property("plugins", e))?;
            // Strait has no stream plugins yet: naming one is an error rather than
            // a silently ignored setting.
            if let Some(name) = plugins.keys().min() {
                return Err(format!("unknown plugin [{name}]"));
            }
        }
        if object.contains_key("protocol") {
            return Err("xRPC (protocol) is not supported by Strait".into());
        }
        let tls_passthrough = match object.get("tls_passthrough") {
            None => false,
            Some(Value::Bool(flag)) => *flag,
            Some(flag) => return Err(in_property("tls_passthrough", wrong_type("boolean", flag))),
        };
        Ok(StreamRoute {
            id: id.to_string(),
            remote_addr,
            server_addr,
            server_port,
            snis,
            upstream,
            upstream_id,
            service_id,
            tls_passthrough,
        })
    }
}

fn ip_field(object: &json::Object, name: &str) -> Result<Option<IpMatch>, String> {
    let Some(value) = object.get(name) else {
        return Ok(None);
    };
    let text = value.as_str().ok_or_else(|| in_property(name, wrong_type("string", value)))?;
    IpMatch::parse(text).map(Some).ok_or_else(|| format!("invalid {name}: {text}"))
}

fn host_pattern(value: &Value) -> Result<String, String> {
    let text = value.as_str().ok_or_else(|| wrong_type("string", value))?;
    if !json::is_host_def(text) {
        return Err(format!("failed to match pattern \"^\\\\*$|^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$\" with \"{text}\""));
    }
    // APISIX compares the route's pattern verbatim against a lower-cased client SNI,
    // so upper-case routes never match there; we lower-case once here (spec §8.9).
    Ok(text.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_seed_routes_parse() {
        let r = StreamRoute::from_json(
            "1",
            &json!({"remote_addr": "127.0.0.1", "upstream": {"nodes": {"127.0.0.1:1995": 1}, "type": "roundrobin"}}),
        )
        .unwrap();
        assert!(r.remote_addr.unwrap().contains("127.0.0.1".parse().unwrap()));
        let r =
            StreamRoute::from_json("2", &json!({"server_addr": "127.0.0.1", "server_port": 2000, "upstream_id": 1}))
                .unwrap();
        assert_eq!(r.server_port, Some(2000));
        assert_eq!(r.upstream_id.as_deref(), Some("1"));
        assert!(StreamRoute::from_json("3", &json!({})).is_ok(), "an empty route is valid and matches everything");
    }

    #[test]
    fn invalid_routes_say_why() {
        let cases = [
            (json!({"remote_addr": ":/8"}), "invalid remote_addr: :/8"),
            (json!({"server_addr": "1.2.3.4/40"}), "invalid server_addr: 1.2.3.4/40"),
            (json!({"server_port": 0}), "property \"server_port\" validation failed: expected 0 to be at least 1"),
            (
                json!({"server_port": "80"}),
                "property \"server_port\" validation failed: wrong type: expected integer, got string",
            ),
            (json!({"bogus": true}), "additional properties forbidden, found bogus"),
            (json!({"plugins": {"limit-conn": {}}}), "unknown plugin [limit-conn]"),
            (
                json!({"upstream_id": "*bad"}),
                "property \"upstream_id\" validation failed: object matches none of the required",
            ),
            (
                json!({"upstream": {"nodes": {"a:0": 1}}}),
                "property \"upstream\" validation failed: property \"nodes\" validation failed: invalid port 0",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(StreamRoute::from_json("1", &input).unwrap_err(), expected, "for {input}");
        }
    }

    #[test]
    fn sni_patterns_are_lower_cased() {
        let r = StreamRoute::from_json("1", &json!({"sni": "A.Test.COM"})).unwrap();
        assert_eq!(r.snis, vec!["a.test.com".to_string()]);
    }
}
