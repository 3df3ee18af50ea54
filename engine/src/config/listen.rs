//! `apisix.stream_proxy.tcp` / `.udp` entries in every APISIX form (spec §1.1):
//! `9100`, `"127.0.0.1:9101"`, `"[::1]:9101"`, `"2000-2005"`, `"ip:2000-2005"`,
//! and for TCP `{addr, tls, proxy_protocol, tls_passthrough}`.

use serde_yaml::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn key(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One bound address (port ranges are expanded into one spec per port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Terminate TLS on this listener.
    pub tls: bool,
    /// Route by the ClientHello's SNI and forward the TLS bytes untouched.
    pub tls_passthrough: bool,
    pub proxy_protocol: bool,
}

/// A port range may not expand past this many listeners in total: each is a
/// socket per worker.
pub const LISTENERS_MAX: usize = 4096;

/// Parses one `stream_proxy.<tcp|udp>` list. Errors are APISIX's messages.
pub fn parse_listen_list(protocol: Protocol, value: &Value) -> Result<Vec<ListenSpec>, String> {
    let key = protocol.key();
    let items = value.as_sequence().ok_or_else(|| format!("stream_proxy.{key} must be a list"))?;
    if items.is_empty() {
        return Err(format!("stream_proxy.{key} must have at least 1 item"));
    }
    let mut specs: Vec<ListenSpec> = Vec::new();
    for item in items {
        let (addr_value, tls, tls_passthrough, proxy_protocol) = match item {
            Value::Mapping(map) if protocol == Protocol::Tcp => {
                for (name, _) in map {
                    let name = name.as_str().unwrap_or("");
                    if !["addr", "tls", "tls_passthrough", "proxy_protocol", "proxy_protocol_to_upstream"]
                        .contains(&name)
                    {
                        return Err(format!("invalid stream_proxy.{key} entry: unknown property {name}"));
                    }
                }
                let addr =
                    map.get("addr").ok_or_else(|| format!("invalid stream_proxy.{key} entry: addr is required"))?;
                let flag = |name: &str| -> Result<bool, String> {
                    match map.get(name) {
                        None => Ok(false),
                        Some(Value::Bool(b)) => Ok(*b),
                        Some(_) => Err(format!("invalid stream_proxy.{key} entry: {name} must be a boolean")),
                    }
                };
                (addr, flag("tls")?, flag("tls_passthrough")?, flag("proxy_protocol")?)
            }
            other => (other, false, false, false),
        };
        let (ip, ports) = parse_addr(key, addr_value)?;
        for port in ports {
            let spec = ListenSpec { protocol, addr: SocketAddr::new(ip, port), tls, tls_passthrough, proxy_protocol };
            if specs.iter().any(|s| s.addr == spec.addr) {
                return Err(format!("invalid stream_proxy.{key} entry: duplicate address {}", spec.addr));
            }
            specs.push(spec);
            if specs.len() > LISTENERS_MAX {
                return Err(format!("invalid stream_proxy.{key} entry: more than {LISTENERS_MAX} listen addresses"));
            }
        }
    }
    Ok(specs)
}

fn parse_addr(key: &str, value: &Value) -> Result<(IpAddr, std::ops::RangeInclusive<u16>), String> {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    match value {
        Value::Number(n) => {
            let port = n
                .as_i64()
                .ok_or_else(|| format!("failed to validate stream_proxy.{key}: port must be an integer, got {n}"))?;
            let port = check_port(key, port)?;
            Ok((any, port..=port))
        }
        Value::String(text) => {
            let (host, ports) = match text.rsplit_once(':') {
                Some((host, ports)) => (Some(host), ports),
                None => (None, text.as_str()),
            };
            let ip = match host {
                None => any,
                Some(host) => {
                    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                    if host.contains(':') && !host.starts_with('[') {
                        return Err(format!(
                            "invalid stream_proxy.{key} entry: IPv6 address must be in brackets: {text}"
                        ));
                    }
                    bare.parse().map_err(|_| format!("invalid stream_proxy.{key} entry: invalid IP address: {text}"))?
                }
            };
            Ok((ip, parse_ports(key, ports, text)?))
        }
        other => Err(format!("invalid port value type: {}", yaml_type(other))),
    }
}

fn parse_ports(key: &str, ports: &str, whole: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let number = |text: &str| -> Result<u16, String> {
        let n: i64 =
            text.trim().parse().map_err(|_| format!("invalid stream_proxy.{key} entry: invalid port: {whole}"))?;
        check_port(key, n)
    };
    match ports.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (number(start)?, number(end)?);
            if start > end {
                return Err(format!("invalid port range (start > end): {ports}"));
            }
            Ok(start..=end)
        }
        None => {
            let port = number(ports)?;
            Ok(port..=port)
        }
    }
}

fn check_port(key: &str, port: i64) -> Result<u16, String> {
    if (1..=65535).contains(&port) {
        Ok(port as u16)
    } else {
        Err(format!("invalid stream_proxy.{key} entry: port out of range (1-65535): {port}"))
    }
}

pub(crate) fn yaml_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "table",
        Value::Mapping(_) => "table",
        Value::Tagged(_) => "tagged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(protocol: Protocol, text: &str) -> Result<Vec<ListenSpec>, String> {
        parse_listen_list(protocol, &serde_yaml::from_str(text).unwrap())
    }

    fn addrs(specs: &[ListenSpec]) -> Vec<String> {
        specs.iter().map(|s| s.addr.to_string()).collect()
    }

    #[test]
    fn every_apisix_form_parses() {
        let specs = parse(
            Protocol::Tcp,
            "[9100, \"127.0.0.1:9101\", \"[::1]:9102\", \"2000-2002\", \"127.0.0.2:3000-3001\", {addr: 9443, tls: true}, {addr: \"[::]:9444\"}]",
        )
        .unwrap();
        assert_eq!(
            addrs(&specs),
            [
                "0.0.0.0:9100",
                "127.0.0.1:9101",
                "[::1]:9102",
                "0.0.0.0:2000",
                "0.0.0.0:2001",
                "0.0.0.0:2002",
                "127.0.0.2:3000",
                "127.0.0.2:3001",
                "0.0.0.0:9443",
                "[::]:9444"
            ]
        );
        assert!(specs[8].tls && !specs[0].tls);
    }

    #[test]
    fn apisix_error_messages() {
        assert_eq!(
            parse(Protocol::Tcp, "[70000]").unwrap_err(),
            "invalid stream_proxy.tcp entry: port out of range (1-65535): 70000"
        );
        assert_eq!(
            parse(Protocol::Udp, "[0]").unwrap_err(),
            "invalid stream_proxy.udp entry: port out of range (1-65535): 0"
        );
        assert_eq!(parse(Protocol::Tcp, "[\"3000-2000\"]").unwrap_err(), "invalid port range (start > end): 3000-2000");
        assert_eq!(
            parse(Protocol::Tcp, "[\"1.2.3.4:1-70000\"]").unwrap_err(),
            "invalid stream_proxy.tcp entry: port out of range (1-65535): 70000"
        );
        assert_eq!(parse(Protocol::Tcp, "[true]").unwrap_err(), "invalid port value type: boolean");
        assert!(parse(Protocol::Tcp, "[80.5]").unwrap_err().starts_with("failed to validate"));
        assert!(
            parse(Protocol::Udp, "[{addr: 53}]").unwrap_err().contains("invalid port value type"),
            "UDP has no object form"
        );
        assert!(parse(Protocol::Tcp, "[9100, 9100]").unwrap_err().contains("duplicate"));
    }
}
