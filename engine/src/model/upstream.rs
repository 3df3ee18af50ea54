//! The `upstream` object (spec §3.2): nodes in both APISIX forms, balancer
//! type, retries and timeouts.

pub mod checks;

use super::json::{self, in_property, wrong_type, Object};
use checks::HealthChecks;
use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// As written: an IP (IPv6 in brackets) or a host name.
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// Higher first; lower groups are backups (spec §4.3.3).
    pub priority: i32,
}

impl Node {
    /// `host:port` as APISIX prints it (IPv6 hosts keep their brackets).
    pub fn address_text(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host without IPv6 brackets, ready for address parsing or resolution.
    pub fn bare_host(&self) -> &str {
        self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalancerType {
    RoundRobin,
    Chash,
    LeastConn,
    Ewma,
}

impl BalancerType {
    fn parse(text: &str) -> Option<BalancerType> {
        match text {
            "roundrobin" => Some(BalancerType::RoundRobin),
            "chash" => Some(BalancerType::Chash),
            "least_conn" => Some(BalancerType::LeastConn),
            "ewma" => Some(BalancerType::Ewma),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpstreamTimeout {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub nodes: Vec<Node>,
    pub balancer: BalancerType,
    pub hash_on: Option<String>,
    pub key: Option<String>,
    /// `None` = unset: nodes − 1 (spec §4.4).
    pub retries: Option<u32>,
    /// Zero = no limit.
    pub retry_timeout: Duration,
    pub timeout: Option<UpstreamTimeout>,
    pub scheme: Option<String>,
    /// Strait extension (nginx's `proxy_responses`): a UDP session ends after
    /// this many replies; 1 suits DNS. `None` = the config.yaml default.
    pub proxy_responses: Option<u32>,
    pub checks: Option<HealthChecks>,
    /// `tls`: client certificate and verification for `scheme: tls`.
    pub tls: Option<UpstreamTls>,
}

/// The upstream's `tls` object (spec §4.7) plus Strait's `verify` and `ca_certs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM client certificate (chain) and key sent to the node (upstream mTLS).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Or an ssl object of `type: client` holding them.
    pub client_cert_id: Option<String>,
    /// Verify the node's certificate (APISIX ignores this for L4 and never verifies).
    pub verify: bool,
    /// PEM bundle of CAs to verify against; unset = the system's roots.
    pub ca_certs: Option<String>,
}

/// nginx's stream defaults, which APISIX does not override (spec §1.3).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

const UPSTREAM_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "nodes",
    "service_name",
    "discovery_type",
    "discovery_args",
    "type",
    "hash_on",
    "key",
    "retries",
    "retry_timeout",
    "timeout",
    "scheme",
    "tls",
    "checks",
    "pass_host",
    "upstream_host",
    "keepalive_pool",
    "proxy_responses",
];

impl Upstream {
    pub fn connect_timeout(&self) -> Duration {
        self.timeout.map(|t| t.connect).unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// nginx's `proxy_timeout`: the longest quiet period on a connection.
    pub fn idle_timeout(&self) -> Duration {
        self.timeout.map(|t| t.send.max(t.read)).unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }

    /// Total tries for one connection: 1 + retries (unset: one per node).
    pub fn max_tries(&self) -> usize {
        let retries = self.retries.map(|r| r as usize).unwrap_or(self.nodes.len().saturating_sub(1));
        1 + retries
    }

    /// Parses and validates an upstream object, as stored or inline in a route.
    pub fn from_json(value: &Value) -> Result<Upstream, String> {
        let object = json::as_object(value)?;
        json::only_properties(object, UPSTREAM_PROPERTIES)?;
        json::check_common_fields(object)?;

        let has_discovery = object.contains_key("service_name") || object.contains_key("discovery_type");
        let nodes =
            match object.get("nodes") {
                Some(nodes) if !has_discovery => parse_nodes(nodes).map_err(|e| in_property("nodes", e))?,
                Some(_) => return Err("value should match only one schema, but matches both schemas 1 and 2".into()),
                None if has_discovery => return Err(
                    "service discovery (service_name/discovery_type) is not supported by Strait; list nodes instead"
                        .into(),
                ),
                None => return Err("value should match only one schema, but matches none".into()),
            };

        let balancer = match object.get("type") {
            None => BalancerType::RoundRobin,
            Some(Value::String(text)) => BalancerType::parse(text).ok_or_else(|| {
                in_property(
                    "type",
                    format!("matches none of the enum values (roundrobin, chash, least_conn, ewma): {text}"),
                )
            })?,
            Some(other) => return Err(in_property("type", wrong_type("string", other))),
        };
        let hash_on = match object.get("hash_on") {
            None => None,
            Some(Value::String(text))
                if ["vars", "header", "cookie", "consumer", "vars_combinations"].contains(&text.as_str()) =>
            {
                Some(text.clone())
            }
            Some(_) => return Err(in_property("hash_on", "matches none of the enum values".into())),
        };
        let key = json::string_field(object, "key", 0, usize::MAX)?.map(str::to_string);
        if balancer == BalancerType::Chash && hash_on.as_deref() != Some("consumer") && key.is_none() {
            return Err("missing key".into());
        }
        let retries = json::integer_field(object, "retries", 0, i64::from(u32::MAX))?.map(|r| r as u32);
        let retry_timeout = match json::number_at_least(object, "retry_timeout", 0.0)? {
            Some(seconds) => seconds_to_duration(seconds).map_err(|e| in_property("retry_timeout", e))?,
            None => Duration::ZERO,
        };
        let timeout = match object.get("timeout") {
            None => None,
            Some(value) => Some(parse_timeout(value).map_err(|e| in_property("timeout", e))?),
        };
        let scheme = match object.get("scheme") {
            None => None,
            Some(Value::String(text))
                if ["grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka"].contains(&text.as_str()) =>
            {
                Some(text.clone())
            }
            Some(_) => return Err(in_property("scheme", "matches none of the enum values".into())),
        };
        let checks = match object.get("checks") {
            Some(value) => Some(HealthChecks::from_json(value).map_err(|e| in_property("checks", e))?),
            None => None,
        };
        let tls = match object.get("tls") {
            Some(value) => Some(parse_tls(value).map_err(|e| in_property("tls", e))?),
            None => None,
        };
        let proxy_responses = json::integer_field(object, "proxy_responses", 0, i64::from(u32::MAX))?.map(|n| n as u32);
        Ok(Upstream {
            nodes,
            balancer,
            hash_on,
            key,
            retries,
            retry_timeout,
            timeout,
            scheme,
            proxy_responses,
            checks,
            tls,
        })
    }
}

fn parse_tls(value: &Value) -> Result<UpstreamTls, String> {
    let object = json::as_object(value)?;
    json::only_properties(object, &["client_cert", "client_key", "client_cert_id", "verify", "ca_certs"])?;
    let text = |name: &str, min: usize| json::string_field(object, name, min, 65536).map(|s| s.map(str::to_string));
    let tls = UpstreamTls {
        client_cert: text("client_cert", 128)?,
        client_key: text("client_key", 64)?,
        client_cert_id: object.get("client_cert_id").and_then(json::id_string),
        verify: match object.get("verify") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(in_property("verify", wrong_type("boolean", other))),
        },
        ca_certs: text("ca_certs", 128)?,
    };
    // APISIX's schema: client_cert and client_key come together, and exclude client_cert_id.
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err("client_cert and client_key must be given together".into());
    }
    if tls.client_cert.is_some() && tls.client_cert_id.is_some() {
        return Err("client_cert_id cannot be used with client_cert and client_key".into());
    }
    Ok(tls)
}

fn parse_timeout(value: &Value) -> Result<UpstreamTimeout, String> {
    let object = json::as_object(value)?;
    json::only_properties(object, &["connect", "send", "read"])?;
    let mut seconds = [0.0; 3];
    for (slot, name) in seconds.iter_mut().zip(["connect", "send", "read"]) {
        *slot = json::number_above(object, name, 0.0)?.ok_or_else(|| format!("property \"{name}\" is required"))?;
    }
    let [connect, send, read] = seconds;
    // A positive timeout must stay positive: 1e-10 s would round to a zero
    // Duration, and a zero connect or idle timeout ends every connection at once.
    let duration = |name: &str, s: f64| match seconds_to_duration(s) {
        Ok(d) if d.is_zero() => Err(in_property(name, format!("expected {s} to be at least 1e-9 (one nanosecond)"))),
        other => other.map_err(|e| in_property(name, e)),
    };
    Ok(UpstreamTimeout {
        connect: duration("connect", connect)?,
        send: duration("send", send)?,
        read: duration("read", read)?,
    })
}

/// Seconds from JSON as a `Duration`. `Duration::from_secs_f64` panics past
/// its range (about 1.8e19 s), and the number comes from an operator.
fn seconds_to_duration(seconds: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("expected {seconds} to be at most {} (seconds)", u64::MAX))
}

/// Nodes in either APISIX form: `{"host:port": weight}` or `[{host, port, weight, priority}]`.
fn parse_nodes(value: &Value) -> Result<Vec<Node>, String> {
    match value {
        Value::Object(map) => {
            let mut nodes = Vec::with_capacity(map.len());
            for (address, weight) in map {
                let weight = weight
                    .as_u64()
                    .filter(|w| *w <= u64::from(u32::MAX))
                    .ok_or("object matches none of the required")?;
                let (host, port) = split_host_port(address)?;
                nodes.push(Node { host, port, weight: weight as u32, priority: 0 });
            }
            Ok(nodes)
        }
        Value::Array(items) => {
            let mut nodes = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let node =
                    parse_node_object(item).map_err(|e| format!("failed to validate item {}: {e}", index + 1))?;
                nodes.push(node);
            }
            Ok(nodes)
        }
        _ => Err("object matches none of the required".into()),
    }
}

fn parse_node_object(value: &Value) -> Result<Node, String> {
    let object: &Object = json::as_object(value)?;
    json::only_properties(object, &["host", "port", "weight", "priority", "metadata"])?;
    let host = json::string_field(object, "host", 1, 256)?.ok_or("property \"host\" is required")?;
    if !json::is_host_def(host) {
        return Err(in_property("host", format!("failed to match pattern with \"{host}\"")));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err("IPv6 address must be enclosed with '[' and ']'".into());
    }
    let port = json::integer_field(object, "port", 1, 65535)?
        .ok_or("property \"port\" is required (a stream node needs a port)")? as u16;
    let weight =
        json::integer_field(object, "weight", 0, i64::from(u32::MAX))?.ok_or("property \"weight\" is required")?;
    let priority = json::integer_field(object, "priority", i64::from(i32::MIN), i64::from(i32::MAX))?.unwrap_or(0);
    Ok(Node { host: host.to_string(), port, weight: weight as u32, priority: priority as i32 })
}

/// Splits `host:port`, `[v6]:port`. A stream node always needs a port.
fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| format!("invalid node address: {address}"))?;
        let port = after.strip_prefix(':').ok_or_else(|| format!("missing port in node address: {address}"))?;
        (format!("[{inside}]"), port)
    } else {
        let (host, port) =
            address.rsplit_once(':').ok_or_else(|| format!("missing port in node address: {address}"))?;
        if host.contains(':') {
            return Err("IPv6 address must be enclosed with '[' and ']'".into());
        }
        (host.to_string(), port)
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("invalid node address: {address}"));
    }
    let port: u32 = port.parse().map_err(|_| format!("invalid port {port}"))?;
    if !(1..=65535).contains(&port) {
        return Err(format!("invalid port {port}"));
    }
    Ok((host, port as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_node_forms_parse() {
        let u =
            Upstream::from_json(&json!({"nodes": {"127.0.0.1:1995": 2, "[::1]:80": 1}, "type": "roundrobin"})).unwrap();
        assert_eq!(u.nodes.len(), 2);
        assert!(u.nodes.iter().any(|n| n.host == "[::1]" && n.port == 80 && n.bare_host() == "::1"));
        let u =
            Upstream::from_json(&json!({"nodes": [{"host": "10.0.0.1", "port": 3306, "weight": 1, "priority": -1}]}))
                .unwrap();
        assert_eq!(u.nodes[0], Node { host: "10.0.0.1".into(), port: 3306, weight: 1, priority: -1 });
    }

    #[test]
    fn defaults_follow_nginx_and_apisix() {
        let u = Upstream::from_json(&json!({"nodes": {"a:1": 1, "b:2": 1, "c:3": 1}})).unwrap();
        assert_eq!(u.max_tries(), 3, "unset retries means one try per node");
        assert_eq!(u.connect_timeout(), Duration::from_secs(60));
        assert_eq!(u.idle_timeout(), Duration::from_secs(600));
        let u = Upstream::from_json(
            &json!({"nodes": {"a:1": 1}, "retries": 0, "timeout": {"connect": 0.5, "send": 3, "read": 7}}),
        )
        .unwrap();
        assert_eq!(u.max_tries(), 1);
        assert_eq!(u.connect_timeout(), Duration::from_millis(500));
        assert_eq!(u.idle_timeout(), Duration::from_secs(7));
    }

    #[test]
    fn invalid_upstreams_name_the_problem() {
        let cases = [
            (json!({"nodes": {"127.0.0.1:70000": 1}}), "property \"nodes\" validation failed: invalid port 70000"),
            (json!({"nodes": {"a:1": 1}, "type": "roundrobn"}), "property \"type\" validation failed: matches none of the enum values (roundrobin, chash, least_conn, ewma): roundrobn"),
            (json!({"nodes": {"a:1": 1}, "type": "chash"}), "missing key"),
            (json!({"nodes": {"a:1": 1}, "retries": -1}), "property \"retries\" validation failed: expected -1 to be at least 0"),
            (json!({"nodes": {"a:1": 1}, "timeout": {"connect": 0, "send": 1, "read": 1}}), "property \"timeout\" validation failed: property \"connect\" validation failed: expected 0 to be greater than 0"),
            (json!({"nodes": {"a:1": 1}, "foo": 1}), "additional properties forbidden, found foo"),
            (json!({"nodes": [{"host": "::1", "port": 80, "weight": 1}]}), "property \"nodes\" validation failed: failed to validate item 1: IPv6 address must be enclosed with '[' and ']'"),
            (json!({}), "value should match only one schema, but matches none"),
        ];
        for (input, expected) in cases {
            assert_eq!(Upstream::from_json(&input).unwrap_err(), expected, "for {input}");
        }
    }
}
