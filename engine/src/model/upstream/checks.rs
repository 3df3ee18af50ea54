//! `upstream.checks` (spec §3.3): active checks are required, passive ones
//! optional. Unlike APISIX, whose default active type is `http`, Strait
//! defaults to `tcp`: a connect probe is what fits an L4 upstream (§8.17).

use crate::model::json::{self, in_property, wrong_type, Object};
use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Tcp,
    /// `http`/`https` are accepted for compatibility; Strait probes them with a
    /// TCP connect (the stream proxy does not speak HTTP).
    HttpAsTcp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActiveCheck {
    pub kind: ProbeKind,
    pub timeout: Duration,
    /// Probe this port instead of the node's.
    pub port: Option<u16>,
    pub healthy_interval: Duration,
    pub healthy_successes: u32,
    pub unhealthy_interval: Duration,
    pub unhealthy_tcp_failures: u32,
    pub unhealthy_timeouts: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PassiveCheck {
    /// 0 = successes never restore a node.
    pub healthy_successes: u32,
    /// 0 = this kind of failure never ejects a node.
    pub unhealthy_tcp_failures: u32,
    pub unhealthy_timeouts: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthChecks {
    pub active: ActiveCheck,
    pub passive: Option<PassiveCheck>,
}

impl HealthChecks {
    /// A stable text of the settings: checkers are shared between upstreams
    /// whose node and settings are the same.
    pub fn fingerprint(&self) -> String {
        format!("{:?}", self)
    }

    pub fn from_json(value: &Value) -> Result<HealthChecks, String> {
        let object = json::as_object(value)?;
        json::only_properties(object, &["active", "passive"])?;
        let Some(active) = object.get("active") else {
            return Err("object matches none of the requireds: [\"active\"] or [\"active\",\"passive\"]".into());
        };
        let active = parse_active(active).map_err(|e| in_property("active", e))?;
        let passive = match object.get("passive") {
            Some(passive) => Some(parse_passive(passive).map_err(|e| in_property("passive", e))?),
            None => None,
        };
        Ok(HealthChecks { active, passive })
    }
}

fn kind(object: &Object) -> Result<ProbeKind, String> {
    match object.get("type") {
        None => Ok(ProbeKind::Tcp),
        Some(Value::String(t)) if t == "tcp" => Ok(ProbeKind::Tcp),
        Some(Value::String(t)) if t == "http" || t == "https" => Ok(ProbeKind::HttpAsTcp),
        Some(Value::String(_)) => Err(in_property("type", "matches none of the enum values".into())),
        Some(other) => Err(in_property("type", wrong_type("string", other))),
    }
}

fn sub<'a>(object: &'a Object, name: &str, allowed: &[&str]) -> Result<Option<&'a Object>, String> {
    match object.get(name) {
        None => Ok(None),
        Some(value) => {
            let inner = json::as_object(value).map_err(|e| in_property(name, e))?;
            json::only_properties(inner, allowed).map_err(|e| in_property(name, e))?;
            Ok(Some(inner))
        }
    }
}

fn count(object: Option<&Object>, outer: &str, name: &str, min: i64, default: u32) -> Result<u32, String> {
    match object {
        None => Ok(default),
        Some(o) => {
            Ok(json::integer_field(o, name, min, 254).map_err(|e| in_property(outer, e))?.map_or(default, |n| n as u32))
        }
    }
}

fn interval(object: Option<&Object>, outer: &str) -> Result<Duration, String> {
    let seconds = match object {
        None => None,
        Some(o) => json::integer_field(o, "interval", 1, 86_400).map_err(|e| in_property(outer, e))?,
    };
    Ok(Duration::from_secs(seconds.unwrap_or(1) as u64))
}

const ACTIVE_PROPERTIES: &[&str] = &[
    "type",
    "timeout",
    "concurrency",
    "host",
    "port",
    "http_method",
    "http_path",
    "http_req_body",
    "https_verify_certificate",
    "req_headers",
    "healthy",
    "unhealthy",
];
const HEALTHY_PROPERTIES: &[&str] = &["interval", "http_statuses", "successes"];
const UNHEALTHY_PROPERTIES: &[&str] = &["interval", "http_statuses", "http_failures", "tcp_failures", "timeouts"];

fn parse_active(value: &Value) -> Result<ActiveCheck, String> {
    let object = json::as_object(value)?;
    json::only_properties(object, ACTIVE_PROPERTIES)?;
    let kind = kind(object)?;
    let timeout = json::number_above(object, "timeout", 0.0)?.map_or(Duration::from_secs(1), Duration::from_secs_f64);
    let port = json::integer_field(object, "port", 1, 65535)?.map(|p| p as u16);
    let healthy = sub(object, "healthy", HEALTHY_PROPERTIES)?;
    let unhealthy = sub(object, "unhealthy", UNHEALTHY_PROPERTIES)?;
    Ok(ActiveCheck {
        kind,
        timeout,
        port,
        healthy_interval: interval(healthy, "healthy")?,
        healthy_successes: count(healthy, "healthy", "successes", 1, 2)?,
        unhealthy_interval: interval(unhealthy, "unhealthy")?,
        unhealthy_tcp_failures: count(unhealthy, "unhealthy", "tcp_failures", 1, 2)?,
        unhealthy_timeouts: count(unhealthy, "unhealthy", "timeouts", 1, 3)?,
    })
}

fn parse_passive(value: &Value) -> Result<PassiveCheck, String> {
    let object = json::as_object(value)?;
    json::only_properties(object, &["type", "healthy", "unhealthy"])?;
    kind(object)?;
    let healthy = sub(object, "healthy", &["http_statuses", "successes"])?;
    let unhealthy = sub(object, "unhealthy", &["http_statuses", "http_failures", "tcp_failures", "timeouts"])?;
    Ok(PassiveCheck {
        healthy_successes: count(healthy, "healthy", "successes", 0, 5)?,
        unhealthy_tcp_failures: count(unhealthy, "unhealthy", "tcp_failures", 0, 2)?,
        unhealthy_timeouts: count(unhealthy, "unhealthy", "timeouts", 0, 7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_apisix_defaults_but_tcp() {
        let checks = HealthChecks::from_json(&json!({"active": {}})).unwrap();
        assert_eq!(checks.active.kind, ProbeKind::Tcp);
        assert_eq!(checks.active.timeout, Duration::from_secs(1));
        assert_eq!(
            (checks.active.healthy_successes, checks.active.unhealthy_tcp_failures, checks.active.unhealthy_timeouts),
            (2, 2, 3)
        );
        let checks = HealthChecks::from_json(&json!({"active": {"type": "tcp"}, "passive": {}})).unwrap();
        assert_eq!(
            checks.passive.unwrap(),
            PassiveCheck { healthy_successes: 5, unhealthy_tcp_failures: 2, unhealthy_timeouts: 7 }
        );
    }

    #[test]
    fn invalid_checks_name_the_field() {
        assert!(HealthChecks::from_json(&json!({"passive": {}})).unwrap_err().contains("requireds"));
        assert_eq!(
            HealthChecks::from_json(&json!({"active": {"unhealthy": {"tcp_failures": 0}}})).unwrap_err(),
            "property \"active\" validation failed: property \"unhealthy\" validation failed: property \"tcp_failures\" validation failed: expected 0 to be at least 1"
        );
        assert!(HealthChecks::from_json(&json!({"active": {"type": "udp"}})).is_err());
    }
}
