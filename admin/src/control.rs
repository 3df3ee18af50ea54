//! The control API (APISIX's `apisix.control`, default 127.0.0.1:9090): read-only
//! views of what the data plane is doing. Today: health checkers, in APISIX's
//! shape, so dashboards and scripts written for APISIX read Strait too.
//!
//! - `GET /v1/healthcheck`: every upstream with `checks`, as a list.
//! - `GET /v1/healthcheck/upstreams/<id>` and `/v1/healthcheck/stream_routes/<id>`:
//!   one checker (a route's inline upstream, or the upstream it references).
//! - `GET /v1/config_source`: where the config comes from (`file`, `etcd`,
//!   `yaml`) and, for etcd, whether it is reachable and since when it is not.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use strait_engine::snapshot::{ResolvedUpstream, RouteTarget};
use strait_engine::Snapshot;

/// The config the workers run now; the binary replaces it on every publish.
pub type LatestSnapshot = Arc<Mutex<Arc<Snapshot>>>;

pub struct ControlHandle {
    local_addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ControlHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        let _ = self.thread.join();
    }
}

pub fn spawn_control(
    listen: SocketAddr,
    latest: LatestSnapshot,
    source: Arc<crate::SourceStatus>,
) -> std::io::Result<ControlHandle> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| std::io::Error::other(format!("control API cannot listen on {listen}: {e}")))?;
    let local_addr = server.server_addr().to_ip().expect("bound to an IP address above");
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = {
        let (server, stopping) = (server.clone(), stopping.clone());
        std::thread::Builder::new().name("strait-control".into()).spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok(request) = server.recv() else { continue };
                let snapshot = latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (status, body) = if *request.method() != tiny_http::Method::Get {
                    (405, json!({"error_msg": "method not allowed"}))
                } else if request.url().split('?').next() == Some("/v1/config_source") {
                    (200, source.to_json())
                } else if *request.method() == tiny_http::Method::Get {
                    answer(request.url(), &snapshot)
                } else {
                    (405, json!({"error_msg": "method not allowed"}))
                };
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("a valid header");
                let response =
                    tiny_http::Response::from_string(body.to_string()).with_status_code(status).with_header(header);
                let _ = request.respond(response);
            }
        })?
    };
    log::info!("control API listening on http://{local_addr}/v1/healthcheck");
    Ok(ControlHandle { local_addr, server, stopping, thread })
}

/// The answer to a control API path: (status, JSON body).
pub fn answer(url: &str, snapshot: &Snapshot) -> (u16, Value) {
    let path = url.split('?').next().unwrap_or(url).trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["v1", "healthcheck"] => {
            let list: Vec<Value> =
                snapshot.upstreams().iter().filter(|u| u.config.checks.is_some()).map(|u| checker(u)).collect();
            (200, Value::Array(dedup_by_name(list)))
        }
        ["v1", "healthcheck", "upstreams", id] => {
            let key = format!("/apisix/upstreams/{id}");
            one(snapshot.upstreams().iter().find(|u| u.key == key).map(|u| u.as_ref()), &key)
        }
        ["v1", "healthcheck", "stream_routes", id] => {
            let key = format!("/apisix/stream_routes/{id}");
            let upstream =
                snapshot.routes().iter().position(|r| r.id == *id).and_then(|index| match snapshot.target(index) {
                    RouteTarget::Upstream(u) => Some(u.as_ref()),
                    RouteTarget::Unavailable(_) => None,
                });
            one(upstream, &key)
        }
        _ => (404, json!({"error_msg": format!("not found: {path}")})),
    }
}

fn one(upstream: Option<&ResolvedUpstream>, key: &str) -> (u16, Value) {
    match upstream {
        Some(u) if u.config.checks.is_some() => (200, checker(u)),
        _ => (404, json!({"error_msg": format!("no health checker for {key}")})),
    }
}

/// One checker in APISIX's shape.
fn checker(upstream: &ResolvedUpstream) -> Value {
    let nodes: Vec<Value> = upstream
        .health
        .iter()
        .enumerate()
        .map(|(i, health)| {
            let addr = upstream.addrs[i];
            let hostname = upstream.names[i].rsplit_once(':').map_or(upstream.names[i].as_str(), |(host, _)| host);
            let counters = health.counters();
            json!({
                "ip": addr.ip().to_string(),
                "port": addr.port(),
                "hostname": hostname.trim_start_matches('[').trim_end_matches(']'),
                "status": if health.is_healthy() { "healthy" } else { "unhealthy" },
                "counter": {
                    "success": counters.success,
                    "tcp_failure": counters.tcp_failure,
                    "timeout_failure": counters.timeout_failure,
                    "http_failure": 0
                }
            })
        })
        .collect();
    json!({"name": upstream.key, "type": "tcp", "nodes": nodes})
}

/// An upstream used by several routes appears once.
fn dedup_by_name(list: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter().filter(|v| seen.insert(v["name"].as_str().unwrap_or_default().to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_engine::Resources;

    fn snapshot() -> Snapshot {
        let resources = Resources {
            stream_routes: vec![
                (
                    "1".into(),
                    json!({"upstream": {"nodes": {"127.0.0.1:1995": 1}, "checks": {"active": {"type": "tcp"}}}}),
                ),
                ("2".into(), json!({"upstream_id": "u"})),
                ("3".into(), json!({"upstream": {"nodes": {"127.0.0.1:1996": 1}}})),
            ],
            upstreams: vec![("u".into(), json!({"nodes": {"localhost:80": 2}, "checks": {"active": {}}}))],
            ..Default::default()
        };
        Snapshot::build(1, &resources, &mut |_| vec!["127.0.0.1".parse().unwrap()]).0
    }

    #[test]
    fn lists_every_checker_in_apisix_shape() {
        let (status, body) = answer("/v1/healthcheck", &snapshot());
        assert_eq!(status, 200);
        let names: Vec<&str> = body.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["/apisix/upstreams/u", "/apisix/stream_routes/1"]);
        assert_eq!(
            body[1],
            json!({"name": "/apisix/stream_routes/1", "type": "tcp", "nodes": [{"ip": "127.0.0.1", "port": 1995, "hostname": "127.0.0.1", "status": "healthy", "counter": {"success": 0, "tcp_failure": 0, "timeout_failure": 0, "http_failure": 0}}]})
        );
        assert_eq!(body[0]["nodes"][0]["hostname"], "localhost");
    }

    #[test]
    fn one_checker_by_upstream_or_route() {
        let s = snapshot();
        assert_eq!(answer("/v1/healthcheck/upstreams/u", &s).1["name"], "/apisix/upstreams/u");
        assert_eq!(answer("/v1/healthcheck/stream_routes/2", &s).1["name"], "/apisix/upstreams/u");
        assert_eq!(answer("/v1/healthcheck/stream_routes/3", &s).0, 404, "no checks, no checker");
        assert_eq!(answer("/v1/nothing", &s).0, 404);
    }
}
