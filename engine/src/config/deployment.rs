//! `deployment.*` beyond the Admin API: which role this node plays and where
//! its stream routes, upstreams, services and ssls come from (spec §1.6).
//!
//! Strait keeps APISIX's keys and meanings, with one difference in defaults:
//! APISIX's `traditional` role defaults to etcd, while Strait defaults to its
//! embedded file store unless `deployment.etcd` or an explicit
//! `config_provider: etcd` is present, so the README's two commands need no
//! external service.

use super::yaml::{error, lookup, parse_duration, show, ConfigError};
use serde_yaml::Value;
use std::time::Duration;

/// `deployment.role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves traffic and the Admin API (writes allowed).
    Traditional,
    /// Serves traffic; the Admin API refuses writes.
    DataPlane,
}

/// Where the objects come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigProvider {
    /// Strait's own durable file store under `strait.data_dir` (no etcd configured).
    Embedded,
    /// Shared through etcd with APISIX's key layout.
    Etcd(EtcdSettings),
    /// `conf/apisix.yaml` beside config.yaml, re-read when it changes (data_plane only).
    Yaml,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    pub role: Role,
    pub provider: ConfigProvider,
}

impl Default for Deployment {
    fn default() -> Deployment {
        Deployment { role: Role::Traditional, provider: ConfigProvider::Embedded }
    }
}

/// One `deployment.etcd.host` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdEndpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `deployment.etcd.tls`: used for `https://` hosts only. File paths are
/// kept as written; the binary reads them at start (relative to config.yaml's
/// folder).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EtcdTls {
    /// Client certificate (PEM file) for etcd's `--client-cert-auth`; with `key`.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Verify etcd's certificate (APISIX's default: true) against the system's
    /// CA bundle plus `ca`; false accepts any certificate.
    pub verify: bool,
    /// Server name sent and verified instead of the host of the URL.
    pub sni: Option<String>,
    /// Extra trusted CA files (PEM): Strait's `deployment.etcd.tls.ca`, then the
    /// files listed in APISIX's `apisix.ssl.ssl_trusted_certificate`
    /// (comma-separated; its `system` entry means the system bundle, always trusted).
    pub ca: Vec<String>,
}

/// `deployment.etcd`, with APISIX's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdSettings {
    /// Tried in order; a connection failure moves to the next.
    pub hosts: Vec<EtcdEndpoint>,
    /// Key prefix without a trailing slash (`/apisix`).
    pub prefix: String,
    /// Bound on one unary call (range, put, txn, ...).
    pub timeout: Duration,
    /// A watch silent this long is reconnected.
    pub watch_timeout: Duration,
    /// Attempts to load the config at start before giving up.
    pub startup_retry: u32,
    /// Cap of the retry back-off while etcd is away.
    pub resync_delay: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: EtcdTls,
}

impl Default for EtcdSettings {
    fn default() -> EtcdSettings {
        EtcdSettings {
            hosts: vec![EtcdEndpoint { tls: false, host: "127.0.0.1".into(), port: 2379 }],
            prefix: "/apisix".into(),
            timeout: Duration::from_secs(30),
            watch_timeout: Duration::from_secs(50),
            startup_retry: 2,
            resync_delay: Duration::from_secs(5),
            user: None,
            password: None,
            tls: EtcdTls { verify: true, ..EtcdTls::default() },
        }
    }
}

/// Reads `deployment.role`, `deployment.role_*.config_provider` and `deployment.etcd`.
pub fn parse_deployment(root: &Value) -> Result<Deployment, ConfigError> {
    let role = match lookup(root, "deployment.role") {
        None | Some(Value::Null) => Role::Traditional,
        Some(Value::String(s)) if s == "traditional" => Role::Traditional,
        Some(Value::String(s)) if s == "data_plane" => Role::DataPlane,
        Some(Value::String(s)) if s == "control_plane" => {
            return Err(error(
                "deployment.role",
                "control_plane is not supported by Strait: use traditional (it serves the Admin API and traffic)",
            ))
        }
        Some(other) => {
            return Err(error("deployment.role", format!("must be traditional or data_plane, got {}", show(other))))
        }
    };
    let etcd_present = matches!(lookup(root, "deployment.etcd"), Some(v) if !v.is_null());
    let provider_key = match role {
        Role::Traditional => "deployment.role_traditional.config_provider",
        Role::DataPlane => "deployment.role_data_plane.config_provider",
    };
    let provider = match lookup(root, provider_key) {
        None | Some(Value::Null) => match role {
            Role::Traditional if etcd_present => "etcd",
            Role::Traditional => "embedded",
            Role::DataPlane => {
                return Err(error(provider_key, "must be set on a data_plane node: etcd or yaml (conf/apisix.yaml)"))
            }
        },
        Some(Value::String(s)) if s == "etcd" => "etcd",
        Some(Value::String(s)) if s == "yaml" && role == Role::DataPlane => "yaml",
        Some(Value::String(s)) if s == "yaml" => {
            return Err(error(
                provider_key,
                "yaml on a traditional node (APISIX's API-driven standalone) is not supported by Strait; \
                 for a file-driven node use deployment.role: data_plane with role_data_plane.config_provider: yaml",
            ))
        }
        Some(other) => {
            let allowed = if role == Role::DataPlane { "etcd or yaml" } else { "etcd" };
            return Err(error(provider_key, format!("must be {allowed}, got {}", show(other))));
        }
    };
    let provider = match provider {
        "etcd" => ConfigProvider::Etcd(parse_etcd(root)?),
        "yaml" => ConfigProvider::Yaml,
        _ => ConfigProvider::Embedded,
    };
    Ok(Deployment { role, provider })
}

fn parse_etcd(root: &Value) -> Result<EtcdSettings, ConfigError> {
    let mut settings = EtcdSettings::default();
    match lookup(root, "deployment.etcd.host") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) if !items.is_empty() => {
            settings.hosts = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = format!("deployment.etcd.host[{i}]");
                    let text =
                        item.as_str().ok_or_else(|| error(&key, format!("must be a URL, got {}", show(item))))?;
                    parse_endpoint(text).map_err(|m| error(&key, m))
                })
                .collect::<Result<_, _>>()?;
        }
        Some(other) => {
            return Err(error(
                "deployment.etcd.host",
                format!("must be a non-empty list of URLs like http://127.0.0.1:2379, got {}", show(other)),
            ))
        }
    }
    match lookup(root, "deployment.etcd.prefix") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.starts_with('/') && s.len() > 1 => {
            settings.prefix = s.trim_end_matches('/').to_string();
            if settings.prefix.is_empty() {
                return Err(error("deployment.etcd.prefix", "must not be only slashes"));
            }
        }
        Some(other) => {
            return Err(error(
                "deployment.etcd.prefix",
                format!("must be a key prefix starting with / (like /apisix), got {}", show(other)),
            ))
        }
    }
    for (key, slot) in [
        ("deployment.etcd.timeout", &mut settings.timeout),
        ("deployment.etcd.watch_timeout", &mut settings.watch_timeout),
        ("deployment.etcd.resync_delay", &mut settings.resync_delay),
    ] {
        match lookup(root, key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let d = parse_duration(v).map_err(|m| error(key, m))?;
                if d.is_zero() || d > Duration::from_secs(86_400) {
                    return Err(error(key, format!("must be between 1ms and 1 day, got {}", show(v))));
                }
                *slot = d;
            }
        }
    }
    match lookup(root, "deployment.etcd.startup_retry") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=1000).contains(&n)) => {
            settings.startup_retry = n.as_u64().expect("checked") as u32;
        }
        Some(other) => {
            return Err(error(
                "deployment.etcd.startup_retry",
                format!("must be a number from 1 to 1000, got {}", show(other)),
            ))
        }
    }
    settings.user = optional_string(root, "deployment.etcd.user")?;
    settings.password = optional_string(root, "deployment.etcd.password")?;
    if settings.user.is_some() != settings.password.is_some() {
        return Err(error("deployment.etcd.user", "user and password must be set together"));
    }
    settings.tls.cert = optional_string(root, "deployment.etcd.tls.cert")?;
    settings.tls.key = optional_string(root, "deployment.etcd.tls.key")?;
    settings.tls.sni = optional_string(root, "deployment.etcd.tls.sni")?;
    if settings.tls.cert.is_some() != settings.tls.key.is_some() {
        return Err(error("deployment.etcd.tls.cert", "cert and key must be set together"));
    }
    settings.tls.ca.extend(optional_string(root, "deployment.etcd.tls.ca")?);
    if let Some(list) = optional_string(root, "apisix.ssl.ssl_trusted_certificate")? {
        let files = list.split(',').map(str::trim).filter(|f| !f.is_empty() && *f != "system");
        settings.tls.ca.extend(files.map(String::from));
    }
    settings.tls.verify = match lookup(root, "deployment.etcd.tls.verify") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(error("deployment.etcd.tls.verify", format!("must be a boolean, got {}", show(other))))
        }
    };
    Ok(settings)
}

fn optional_string(root: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match lookup(root, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(error(key, format!("must be a string, got {}", show(other)))),
    }
}

/// `http://host:port` or `https://host:port` (port defaults to 2379, as etcd's).
fn parse_endpoint(text: &str) -> Result<EtcdEndpoint, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!("must start with http:// or https://, got \"{text}\""));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!("must be scheme://host:port without a path, got \"{text}\""));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("unclosed [ in \"{text}\""))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("missing host in \"{text}\""));
    }
    let port = match port {
        None => 2379,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port in \"{text}\""))?,
    };
    Ok(EtcdEndpoint { tls, host: host.to_string(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Deployment, ConfigError> {
        parse_deployment(&serde_yaml::from_str(text).unwrap())
    }

    #[test]
    fn no_etcd_means_the_embedded_store() {
        assert_eq!(parse("{}").unwrap(), Deployment::default());
        assert_eq!(parse("deployment: {role: traditional}").unwrap().provider, ConfigProvider::Embedded);
    }

    #[test]
    fn an_etcd_section_selects_etcd_with_apisix_defaults() {
        let d = parse("deployment: {etcd: {host: [\"http://127.0.0.1:23790\", \"https://[::1]\"]}}").unwrap();
        let ConfigProvider::Etcd(etcd) = d.provider else { panic!("etcd expected") };
        assert_eq!(etcd.hosts[0], EtcdEndpoint { tls: false, host: "127.0.0.1".into(), port: 23790 });
        assert_eq!(etcd.hosts[1], EtcdEndpoint { tls: true, host: "::1".into(), port: 2379 });
        assert_eq!(etcd.hosts[1].to_string(), "https://[::1]:2379");
        assert_eq!(etcd.prefix, "/apisix");
        assert_eq!((etcd.timeout, etcd.watch_timeout), (Duration::from_secs(30), Duration::from_secs(50)));
        assert_eq!((etcd.startup_retry, etcd.resync_delay), (2, Duration::from_secs(5)));
        assert!(etcd.tls.verify);
    }

    #[test]
    fn the_apisix_shape_parses() {
        let d = parse(
            r#"
deployment:
  role: data_plane
  role_data_plane:
    config_provider: etcd
  etcd:
    host: ["http://10.0.0.1:2379"]
    prefix: /strait/
    timeout: 3
    watch_timeout: 20
    startup_retry: 5
    resync_delay: 1
    user: root
    password: secret
    tls: {verify: false}
"#,
        )
        .unwrap();
        assert_eq!(d.role, Role::DataPlane);
        let ConfigProvider::Etcd(etcd) = d.provider else { panic!("etcd expected") };
        assert_eq!(etcd.prefix, "/strait");
        assert_eq!(etcd.timeout, Duration::from_secs(3));
        assert_eq!(etcd.startup_retry, 5);
        assert_eq!(etcd.user.as_deref(), Some("root"));
        assert!(!etcd.tls.verify);
    }

    #[test]
    fn tls_files_and_trusted_cas_are_kept_as_written() {
        let d = parse(
            r#"
apisix:
  ssl:
    ssl_trusted_certificate: "system, /etc/strait/extra-ca.pem"
deployment:
  etcd:
    host: ["https://127.0.0.1:2379"]
    tls: {cert: etcd-client.pem, key: etcd-client.key, ca: etcd-ca.pem, sni: etcd.internal}
"#,
        )
        .unwrap();
        let ConfigProvider::Etcd(etcd) = d.provider else { panic!("etcd expected") };
        assert_eq!(etcd.tls.cert.as_deref(), Some("etcd-client.pem"));
        assert_eq!(etcd.tls.key.as_deref(), Some("etcd-client.key"));
        assert_eq!(etcd.tls.ca, ["etcd-ca.pem", "/etc/strait/extra-ca.pem"]);
        assert_eq!(etcd.tls.sni.as_deref(), Some("etcd.internal"));
        assert!(etcd.tls.verify);
        let e = parse("deployment: {etcd: {tls: {cert: a.pem}}}").unwrap_err();
        assert_eq!(e.key, "deployment.etcd.tls.cert");
        let e = parse("deployment: {etcd: {tls: {ca: [a.pem]}}}").unwrap_err();
        assert_eq!(e.key, "deployment.etcd.tls.ca");
    }

    #[test]
    fn standalone_is_data_plane_with_yaml() {
        let d = parse("deployment: {role: data_plane, role_data_plane: {config_provider: yaml}}").unwrap();
        assert_eq!(d, Deployment { role: Role::DataPlane, provider: ConfigProvider::Yaml });
    }

    #[test]
    fn errors_name_the_key_and_what_is_allowed() {
        let e = parse("deployment: {role: data_plane}").unwrap_err();
        assert_eq!(e.key, "deployment.role_data_plane.config_provider");
        let e = parse("deployment: {role: edge}").unwrap_err();
        assert_eq!(e.to_string(), "deployment.role: must be traditional or data_plane, got \"edge\"");
        let e = parse("deployment: {role_traditional: {config_provider: yaml}}").unwrap_err();
        assert!(e.message.contains("data_plane"), "{e}");
        let e = parse("deployment: {etcd: {host: [\"127.0.0.1:2379\"]}}").unwrap_err();
        assert_eq!(e.key, "deployment.etcd.host[0]");
        let e = parse("deployment: {etcd: {prefix: apisix}}").unwrap_err();
        assert_eq!(e.key, "deployment.etcd.prefix");
        let e = parse("deployment: {etcd: {user: root}}").unwrap_err();
        assert_eq!(e.key, "deployment.etcd.user");
    }
}
