//! The whole of config.yaml that Strait reads, with APISIX's defaults.

use super::listen::{parse_listen_list, yaml_type, ListenSpec, Protocol};
use crate::model::IpMatch;
use serde_yaml::Value;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Http,
    Stream,
    HttpAndStream,
}

impl ProxyMode {
    pub fn stream_enabled(self) -> bool {
        self != ProxyMode::Http
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRole {
    Admin,
    Viewer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminKey {
    pub name: String,
    /// Empty until generated at start (see `StraitConfig::needs_generated_admin_key`).
    pub key: String,
    pub role: AdminRole,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub keys: Vec<AdminKey>,
    pub key_required: bool,
    /// `None` = every peer may connect (the key was set to null).
    pub allow_admin: Option<Vec<IpMatch>>,
    pub cors: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerProcesses {
    Auto,
    Count(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct StraitConfig {
    pub proxy_mode: ProxyMode,
    pub tcp: Vec<ListenSpec>,
    pub udp: Vec<ListenSpec>,
    pub admin: AdminSettings,
    pub worker_processes: WorkerProcesses,
    /// Connections (proxied TCP connections) per worker.
    pub worker_connections: usize,
    /// How long established connections may finish after SIGTERM.
    pub worker_shutdown_timeout: Duration,
    /// `strait.data_dir`: where the embedded store keeps its files; relative
    /// paths are relative to the config file's folder.
    pub data_dir: String,
    /// `strait.buffer_size`: bytes per direction per connection while data is in flight.
    pub buffer_size: usize,
    /// `strait.udp.idle_timeout`: a UDP session's idle timeout when its upstream sets no `timeout`.
    pub udp_idle_timeout: Duration,
    /// `strait.udp.sessions_max`: UDP sessions per worker (each holds a socket).
    pub udp_sessions_max: usize,
    /// `strait.udp.proxy_responses`: replies after which a UDP session ends (0 = unlimited).
    pub udp_proxy_responses: u32,
    /// `apisix.enable_control` + `apisix.control.{ip,port}`: the control API
    /// (health checks); `None` when disabled.
    pub control_listen: Option<SocketAddr>,
    /// `deployment.role` and where the objects come from (deployment.rs).
    pub deployment: super::deployment::Deployment,
    /// `apisix.ssl.fallback_sni`, `strait.tls.handshake_timeout` (tls.rs).
    pub tls: super::tls::TlsSettings,
    /// `strait.splice`: forward plain TCP with splice(2) through pipes (Linux), no copy through user space.
    pub splice: bool,
    /// `strait.loopback_tcp_congestion`: the congestion control given to a
    /// streaming connection's sockets whose peer is on this host; `None` keeps
    /// the system's (net.ipv4.tcp_congestion_control).
    pub loopback_tcp_congestion: Option<String>,
    /// `apisix.dns_resolver_valid`: how long a resolved upstream node host name
    /// is trusted before it is looked up again.
    pub dns_resolver_valid: Duration,
    /// APISIX keys set in the file that Strait reads but does not act on, each
    /// with what happens instead: logged at start and printed by `-t`.
    pub ignored: Vec<String>,
    /// `nginx_config.stream.enable_access_log` and its companions; `None` = off.
    pub access_log: Option<super::access_log::AccessLogSettings>,
}

/// A config.yaml error: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub(super) fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), message: message.into() }
}

const DEFAULT_ADMIN_PORT: u16 = 9180;
const DEFAULT_WORKER_CONNECTIONS: usize = 10620;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(240);
const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

impl StraitConfig {
    /// Parses config.yaml text. An empty document is the all-defaults config.
    pub fn parse(text: &str) -> Result<StraitConfig, ConfigError> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| error("(document)", format!("invalid YAML: {e}")))?;
        let root = match root {
            Value::Null => Value::Mapping(Default::default()),
            Value::Mapping(_) => root,
            other => {
                return Err(error("(document)", format!("expected a mapping at the top, got {}", yaml_type(&other))))
            }
        };

        let proxy_mode = match lookup(&root, "apisix.proxy_mode") {
            None | Some(Value::Null) => ProxyMode::Http,
            Some(Value::String(s)) if s == "http" => ProxyMode::Http,
            Some(Value::String(s)) if s == "stream" => ProxyMode::Stream,
            Some(Value::String(s)) if s == "http&stream" => ProxyMode::HttpAndStream,
            Some(other) => {
                return Err(error(
                    "apisix.proxy_mode",
                    format!("must be one of http, stream, http&stream, got {}", show(other)),
                ))
            }
        };
        let tcp = match lookup(&root, "apisix.stream_proxy.tcp") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_listen_list(Protocol::Tcp, v).map_err(|m| error("apisix.stream_proxy.tcp", m))?,
        };
        let udp = match lookup(&root, "apisix.stream_proxy.udp") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_listen_list(Protocol::Udp, v).map_err(|m| error("apisix.stream_proxy.udp", m))?,
        };
        if let Some(spec) = tcp.iter().find(|s| s.proxy_protocol) {
            return Err(error(
                "apisix.stream_proxy.tcp",
                format!("proxy_protocol on {} is not supported by Strait yet", spec.addr),
            ));
        }

        let admin = parse_admin(&root)?;
        let worker_processes = match lookup(&root, "nginx_config.worker_processes") {
            None | Some(Value::Null) => WorkerProcesses::Auto,
            Some(Value::String(s)) if s == "auto" => WorkerProcesses::Auto,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=1024).contains(&n)) => {
                WorkerProcesses::Count(n.as_u64().expect("checked above") as usize)
            }
            Some(Value::String(s)) if s.parse::<usize>().is_ok_and(|n| (1..=1024).contains(&n)) => {
                WorkerProcesses::Count(s.parse().expect("checked above"))
            }
            Some(other) => {
                return Err(error(
                    "nginx_config.worker_processes",
                    format!("must be \"auto\" or a number from 1 to 1024, got {}", show(other)),
                ))
            }
        };
        let worker_connections = match lookup(&root, "nginx_config.event.worker_connections") {
            None | Some(Value::Null) => DEFAULT_WORKER_CONNECTIONS,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=10_000_000).contains(&n)) => {
                n.as_u64().expect("checked") as usize
            }
            Some(other) => {
                return Err(error(
                    "nginx_config.event.worker_connections",
                    format!("must be a positive number, got {}", show(other)),
                ))
            }
        };
        let worker_shutdown_timeout = match lookup(&root, "nginx_config.worker_shutdown_timeout") {
            None | Some(Value::Null) => DEFAULT_SHUTDOWN_TIMEOUT,
            Some(v) => parse_duration(v).map_err(|m| error("nginx_config.worker_shutdown_timeout", m))?,
        };
        let data_dir = match lookup(&root, "strait.data_dir") {
            None | Some(Value::Null) => "strait-data".to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(error("strait.data_dir", format!("must be a non-empty path, got {}", show(other))))
            }
        };
        let buffer_size = match lookup(&root, "strait.buffer_size") {
            None | Some(Value::Null) => DEFAULT_BUFFER_SIZE,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1024..=16 << 20).contains(&n)) => {
                n.as_u64().expect("checked") as usize
            }
            Some(other) => {
                return Err(error(
                    "strait.buffer_size",
                    format!("must be a byte count from 1024 to 16777216, got {}", show(other)),
                ))
            }
        };
        let udp_idle_timeout = match lookup(&root, "strait.udp.idle_timeout") {
            None | Some(Value::Null) => Duration::from_secs(600),
            Some(v) => parse_duration(v).map_err(|m| error("strait.udp.idle_timeout", m))?,
        };
        if udp_idle_timeout.is_zero() {
            return Err(error("strait.udp.idle_timeout", "must be greater than 0"));
        }
        let udp_sessions_max = match lookup(&root, "strait.udp.sessions_max") {
            None | Some(Value::Null) => 16_384,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=1_000_000).contains(&n)) => {
                n.as_u64().expect("checked") as usize
            }
            Some(other) => {
                return Err(error(
                    "strait.udp.sessions_max",
                    format!("must be a number from 1 to 1000000, got {}", show(other)),
                ))
            }
        };
        let udp_proxy_responses = match lookup(&root, "strait.udp.proxy_responses") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {
                n.as_u64().expect("checked") as u32
            }
            Some(other) => {
                return Err(error("strait.udp.proxy_responses", format!("must be a number ≥ 0, got {}", show(other))))
            }
        };
        let control_enabled = match lookup(&root, "apisix.enable_control") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(error("apisix.enable_control", format!("must be a boolean, got {}", show(other))))
            }
        };
        let control_ip: IpAddr = match lookup(&root, "apisix.control.ip") {
            None | Some(Value::Null) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(Value::String(s)) => {
                s.parse().map_err(|_| error("apisix.control.ip", format!("invalid IP address: {s}")))?
            }
            Some(other) => {
                return Err(error("apisix.control.ip", format!("must be an IP address, got {}", show(other))))
            }
        };
        let control_port = match lookup(&root, "apisix.control.port") {
            None | Some(Value::Null) => 9090,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {
                n.as_u64().expect("checked") as u16
            }
            Some(other) => {
                return Err(error("apisix.control.port", format!("port out of range (1-65535): {}", show(other))))
            }
        };
        let control_listen = control_enabled.then_some(SocketAddr::new(control_ip, control_port));
        let deployment = super::deployment::parse_deployment(&root)?;
        let mut tls = super::tls::TlsSettings::default();
        match lookup(&root, "apisix.ssl.fallback_sni") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                tls.fallback_sni =
                    Some(super::tls::parse_fallback_sni(s).map_err(|m| error("apisix.ssl.fallback_sni", m))?)
            }
            Some(other) => {
                return Err(error("apisix.ssl.fallback_sni", format!("must be a host name, got {}", show(other))))
            }
        }
        if let Some(v) = lookup(&root, "strait.tls.handshake_timeout").filter(|v| !v.is_null()) {
            tls.handshake_timeout = parse_duration(v).map_err(|m| error("strait.tls.handshake_timeout", m))?;
            if tls.handshake_timeout.is_zero() {
                return Err(error("strait.tls.handshake_timeout", "must be greater than 0"));
            }
        }
        let splice = match lookup(&root, "strait.splice") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(error("strait.splice", format!("must be a boolean, got {}", show(other)))),
        };
        // APISIX takes the record's TTL unless this is set; the system resolver
        // Strait uses does not report TTLs, hence a default.
        let dns_resolver_valid = match lookup(&root, "apisix.dns_resolver_valid") {
            None | Some(Value::Null) => Duration::from_secs(30),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=86_400).contains(&n)) => {
                Duration::from_secs(n.as_u64().expect("checked"))
            }
            Some(other) => {
                return Err(error(
                    "apisix.dns_resolver_valid",
                    format!("must be whole seconds from 1 to 86400, got {}", show(other)),
                ))
            }
        };
        let loopback_tcp_congestion = parse_loopback_tcp_congestion(lookup(&root, "strait.loopback_tcp_congestion"))
            .map_err(|m| error("strait.loopback_tcp_congestion", m))?;
        Ok(StraitConfig {
            proxy_mode,
            tcp,
            udp,
            admin,
            worker_processes,
            worker_connections,
            worker_shutdown_timeout,
            data_dir,
            buffer_size,
            udp_idle_timeout,
            udp_sessions_max,
            udp_proxy_responses,
            control_listen,
            deployment,
            tls,
            splice,
            loopback_tcp_congestion,
            dns_resolver_valid,
            ignored: ignored_keys_in_use(&root),
            access_log: super::access_log::parse(&root)?,
        })
    }

    /// True when an admin-role key is empty: APISIX generates one at start and
    /// writes it back into config.yaml.
    pub fn needs_generated_admin_key(&self) -> bool {
        self.admin.key_required && self.admin.keys.iter().any(|k| k.role == AdminRole::Admin && k.key.is_empty())
    }
}

fn parse_admin(root: &Value) -> Result<AdminSettings, ConfigError> {
    let enabled = match lookup(root, "apisix.enable_admin") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(error("apisix.enable_admin", format!("must be a boolean, got {}", show(other)))),
    };
    let ip: IpAddr = match lookup(root, "deployment.admin.admin_listen.ip") {
        None | Some(Value::Null) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(Value::String(s)) => {
            s.parse().map_err(|_| error("deployment.admin.admin_listen.ip", format!("invalid IP address: {s}")))?
        }
        Some(other) => {
            return Err(error(
                "deployment.admin.admin_listen.ip",
                format!("must be an IP address, got {}", show(other)),
            ))
        }
    };
    let port = match lookup(root, "deployment.admin.admin_listen.port") {
        None | Some(Value::Null) => DEFAULT_ADMIN_PORT,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {
            n.as_u64().expect("checked") as u16
        }
        Some(other) => {
            return Err(error(
                "deployment.admin.admin_listen.port",
                format!("port out of range (1-65535): {}", show(other)),
            ))
        }
    };
    let keys = match lookup(root, "deployment.admin.admin_key") {
        None | Some(Value::Null) => vec![AdminKey { name: "admin".into(), key: String::new(), role: AdminRole::Admin }],
        Some(Value::Sequence(items)) => {
            let mut keys = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let at = format!("deployment.admin.admin_key[{index}]");
                let name = match item.get("name") {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(error(&format!("{at}.name"), "must be a string")),
                };
                let key = match item.get("key") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(other) => {
                        return Err(error(&format!("{at}.key"), format!("must be a string, got {}", show(other))))
                    }
                };
                let role = match item.get("role") {
                    Some(Value::String(s)) if s == "admin" => AdminRole::Admin,
                    Some(Value::String(s)) if s == "viewer" => AdminRole::Viewer,
                    other => {
                        return Err(error(
                            &format!("{at}.role"),
                            format!("must be admin or viewer, got {}", other.map(show).unwrap_or("nothing".into())),
                        ))
                    }
                };
                keys.push(AdminKey { name, key, role });
            }
            keys
        }
        Some(other) => return Err(error("deployment.admin.admin_key", format!("must be a list, got {}", show(other)))),
    };
    let key_required = match lookup(root, "deployment.admin.admin_key_required") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(error("deployment.admin.admin_key_required", format!("must be a boolean, got {}", show(other))))
        }
    };
    let allow_admin = match lookup_present(root, "deployment.admin.allow_admin") {
        Lookup::Missing => Some(vec![IpMatch::parse("127.0.0.0/24").expect("a valid default")]),
        Lookup::Present(Value::Null) => None,
        Lookup::Present(Value::Sequence(items)) => {
            let mut nets = Vec::new();
            for item in items {
                let text = item.as_str().ok_or_else(|| {
                    error("deployment.admin.allow_admin", format!("must list IPs or CIDRs, got {}", show(item)))
                })?;
                nets.push(
                    IpMatch::parse(text)
                        .ok_or_else(|| error("deployment.admin.allow_admin", format!("invalid IP or CIDR: {text}")))?,
                );
            }
            Some(nets)
        }
        Lookup::Present(other) => {
            return Err(error("deployment.admin.allow_admin", format!("must be a list, got {}", show(other))))
        }
    };
    let cors = match lookup(root, "deployment.admin.enable_admin_cors") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(error("deployment.admin.enable_admin_cors", format!("must be a boolean, got {}", show(other))))
        }
    };
    Ok(AdminSettings { enabled, listen: SocketAddr::new(ip, port), keys, key_required, allow_admin, cors })
}

/// nginx time syntax: `240s`, `5m`, `500ms`, or a bare number of seconds.
pub(super) fn parse_duration(value: &Value) -> Result<Duration, String> {
    let text = match value {
        Value::Number(n) => {
            return n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| format!("invalid duration {n}"))
        }
        Value::String(s) => s.trim(),
        other => return Err(format!("must be a duration like \"240s\", got {}", show(other))),
    };
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("invalid duration {text}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("invalid duration {text} (units: ms, s, m, h)")),
    };
    // try_: from_secs_f64 panics on a number too large for a Duration.
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text} (too large)"))
}

/// APISIX keys an operator may carry over whose effect Strait does not have:
/// silence would let them believe it does.
fn ignored_keys_in_use(root: &Value) -> Vec<String> {
    let set = |key: &str| lookup(root, key).filter(|v| !v.is_null() && *v != &Value::Bool(false));
    let mut ignored = Vec::new();
    if set("apisix.dns_resolver").is_some_and(|v| !matches!(v, Value::Sequence(s) if s.is_empty())) {
        ignored.push(
            "apisix.dns_resolver: not used; upstream node names are looked up through the system resolver \
             (/etc/resolv.conf, /etc/hosts)"
                .to_string(),
        );
    }
    ignored
}

/// On loopback there is no path to model and no queue to keep short, and with
/// the default qdisc BBR paces every burst with a timer: Reno (always allowed
/// to unprivileged processes) moves the same bytes for less CPU.
const LOOPBACK_TCP_CONGESTION_DEFAULT: &str = "reno";
/// The kernel's limit on a congestion control name (TCP_CA_NAME_MAX, NUL included).
const TCP_CA_NAME_MAX: usize = 16;

fn parse_loopback_tcp_congestion(value: Option<&Value>) -> Result<Option<String>, String> {
    let name = match value {
        None => return Ok(Some(LOOPBACK_TCP_CONGESTION_DEFAULT.to_string())),
        Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() || s == "system" => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("must be a congestion control name or \"system\", got {}", show(other))),
    };
    let well_formed = name.len() < TCP_CA_NAME_MAX && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return Err(format!("{name:?} is not a congestion control name (like reno, cubic, bbr; at most 15 letters)"));
    }
    Ok(Some(name.clone()))
}

pub(super) fn lookup<'a>(root: &'a Value, dotted: &str) -> Option<&'a Value> {
    match lookup_present(root, dotted) {
        Lookup::Present(v) => Some(v),
        Lookup::Missing => None,
    }
}

enum Lookup<'a> {
    Missing,
    Present(&'a Value),
}

fn lookup_present<'a>(root: &'a Value, dotted: &str) -> Lookup<'a> {
    let mut node = root;
    for part in dotted.split('.') {
        match node.get(part) {
            Some(next) => node = next,
            None => return Lookup::Missing,
        }
    }
    Lookup::Present(node)
}

pub(super) fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        other => serde_yaml::to_string(other).map(|s| s.trim().to_string()).unwrap_or_else(|_| yaml_type(other).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_apisix_defaults() {
        let c = StraitConfig::parse("").unwrap();
        assert_eq!(c.proxy_mode, ProxyMode::Http);
        assert_eq!(c.admin.listen, "0.0.0.0:9180".parse().unwrap());
        assert!(c.needs_generated_admin_key());
        assert_eq!(c.admin.allow_admin.as_ref().unwrap().len(), 1);
        assert_eq!(c.worker_processes, WorkerProcesses::Auto);
        assert_eq!(c.loopback_tcp_congestion.as_deref(), Some("reno"));
        assert_eq!(c.dns_resolver_valid, Duration::from_secs(30));
    }

    #[test]
    fn apisix_keys_without_effect_are_reported() {
        let c = StraitConfig::parse("apisix:\n  dns_resolver: [10.0.0.2]\n").unwrap();
        assert_eq!(c.ignored.len(), 1, "{:?}", c.ignored);
        assert!(c.ignored[0].starts_with("apisix.dns_resolver:"));
        let quiet = "apisix:\n  dns_resolver: []\n";
        assert!(StraitConfig::parse(quiet).unwrap().ignored.is_empty());
        assert!(StraitConfig::parse("").unwrap().ignored.is_empty());
    }

    #[test]
    fn dns_resolver_valid_is_whole_seconds() {
        let parse = |v: &str| StraitConfig::parse(&format!("apisix:\n  dns_resolver_valid: {v}\n"));
        assert_eq!(parse("5").unwrap().dns_resolver_valid, Duration::from_secs(5));
        for bad in ["0", "-1", "1.5", "\"30s\"", "86401"] {
            assert_eq!(parse(bad).unwrap_err().key, "apisix.dns_resolver_valid", "{bad}");
        }
    }

    #[test]
    fn loopback_tcp_congestion_takes_a_name_or_system() {
        let parse = |v: &str| StraitConfig::parse(&format!("strait:\n  loopback_tcp_congestion: {v}\n"));
        assert_eq!(parse("cubic").unwrap().loopback_tcp_congestion.as_deref(), Some("cubic"));
        assert_eq!(parse("system").unwrap().loopback_tcp_congestion, None);
        assert_eq!(parse("~").unwrap().loopback_tcp_congestion, None);
        assert_eq!(parse("''").unwrap().loopback_tcp_congestion, None);
        for bad in ["3", "[reno]", "a_name_far_too_long", "\"re no\""] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.key, "strait.loopback_tcp_congestion", "{bad}: {e}");
        }
    }

    #[test]
    fn the_shipped_shape_parses() {
        let c = StraitConfig::parse(
            r#"
apisix:
  proxy_mode: stream
  stream_proxy:
    tcp: [9100, "127.0.0.1:9101"]
    udp: [9200]
deployment:
  admin:
    admin_key:
      - {name: admin, key: abc, role: admin}
      - {name: viewer, key: def, role: viewer}
    admin_listen: {ip: 127.0.0.1, port: 9180}
    allow_admin: ~
nginx_config:
  worker_processes: 2
  worker_shutdown_timeout: 5s
"#,
        )
        .unwrap();
        assert_eq!(c.proxy_mode, ProxyMode::Stream);
        assert_eq!(c.tcp.len(), 2);
        assert_eq!(c.udp[0].addr, "0.0.0.0:9200".parse().unwrap());
        assert!(!c.needs_generated_admin_key());
        assert_eq!(c.admin.keys[1].role, AdminRole::Viewer);
        assert_eq!(c.admin.allow_admin, None, "null allows every peer");
        assert_eq!(c.worker_processes, WorkerProcesses::Count(2));
        assert_eq!(c.worker_shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        let e = StraitConfig::parse("apisix: {stream_proxy: {tcp: [70000]}}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "apisix.stream_proxy.tcp: invalid stream_proxy.tcp entry: port out of range (1-65535): 70000"
        );
        let e = StraitConfig::parse("apisix: {proxy_mode: tcp}").unwrap_err();
        assert_eq!(e.key, "apisix.proxy_mode");
        let e = StraitConfig::parse("nginx_config: {worker_processes: 0}").unwrap_err();
        assert_eq!(e.key, "nginx_config.worker_processes");
        let e = StraitConfig::parse("deployment: {admin: {admin_key: [{name: a, key: b, role: root}]}}").unwrap_err();
        assert_eq!(e.key, "deployment.admin.admin_key[0].role");
    }
}
