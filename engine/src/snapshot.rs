//! A config snapshot: the validated, compiled form of every stream route and
//! upstream, immutable and shared by all workers (`Arc<Snapshot>`). Building
//! one is the only place where config objects turn into engine state.

use crate::model::{StreamRoute, Upstream};
use crate::router::{MatchInput, Router};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The raw objects of one config version, as stored (JSON, ids as key suffixes).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub stream_routes: Vec<(String, Value)>,
    pub upstreams: Vec<(String, Value)>,
    pub services: Vec<(String, Value)>,
}

/// An upstream with its nodes' addresses resolved.
#[derive(Debug, PartialEq)]
pub struct ResolvedUpstream {
    /// The key its balancer state is kept under: `/apisix/upstreams/<id>` or,
    /// for an inline upstream, `/apisix/stream_routes/<id>`.
    pub key: String,
    pub config: Upstream,
    /// One address per node of `config.nodes` that resolved; `weights` and
    /// `priorities` are parallel to it.
    pub addrs: Vec<SocketAddr>,
    pub weights: Vec<u32>,
    pub priorities: Vec<i32>,
}

/// Where a matched route sends its connections.
#[derive(Debug)]
pub enum RouteTarget {
    Upstream(Arc<ResolvedUpstream>),
    /// The route matches but cannot be served (APISIX closes such connections
    /// too); the text is logged.
    Unavailable(String),
}

pub struct Snapshot {
    pub version: u64,
    routes: Vec<StreamRoute>,
    targets: Vec<RouteTarget>,
    router: Router,
    upstream_keys: Vec<String>,
}

/// Turns a node host into addresses. The engine does no I/O, so name
/// resolution is the caller's (IP literals never reach it).
pub type Resolver<'a> = &'a mut dyn FnMut(&str) -> Vec<IpAddr>;

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            routes: Vec::new(),
            targets: Vec::new(),
            router: Router::new(&[]),
            upstream_keys: Vec::new(),
        }
    }

    /// Builds a snapshot. Invalid objects are skipped and reported in the
    /// returned warnings (the Admin API validates before storing, so this only
    /// happens with hand-edited or foreign data).
    pub fn build(version: u64, resources: &Resources, resolve: Resolver<'_>) -> (Snapshot, Vec<String>) {
        let mut warnings = Vec::new();
        let mut upstreams: HashMap<&str, Arc<ResolvedUpstream>> = HashMap::new();
        for (id, value) in &resources.upstreams {
            match Upstream::from_json(value) {
                Ok(config) => {
                    let resolved = resolve_upstream(format!("/apisix/upstreams/{id}"), config, resolve, &mut warnings);
                    upstreams.insert(id, Arc::new(resolved));
                }
                Err(e) => warnings.push(format!("skipped invalid upstream [{id}]: {e}")),
            }
        }
        let services: HashMap<&str, &Value> = resources.services.iter().map(|(id, v)| (id.as_str(), v)).collect();

        let mut sorted: Vec<&(String, Value)> = resources.stream_routes.iter().collect();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut routes = Vec::with_capacity(sorted.len());
        let mut targets = Vec::with_capacity(sorted.len());
        for (id, value) in sorted {
            let route = match StreamRoute::from_json(id, value) {
                Ok(route) => route,
                Err(e) => {
                    warnings.push(format!("skipped invalid stream route [{id}]: {e}"));
                    continue;
                }
            };
            targets.push(route_target(&route, &upstreams, &services, resolve, &mut warnings));
            routes.push(route);
        }
        let router = Router::new(&routes);
        let mut upstream_keys: Vec<String> = targets
            .iter()
            .filter_map(|t| match t {
                RouteTarget::Upstream(u) => Some(u.key.clone()),
                RouteTarget::Unavailable(_) => None,
            })
            .collect();
        upstream_keys.sort();
        upstream_keys.dedup();
        (Snapshot { version, routes, targets, router, upstream_keys }, warnings)
    }

    pub fn routes(&self) -> &[StreamRoute] {
        &self.routes
    }

    /// The matched route's index, id and target.
    pub fn find_route(&self, input: &MatchInput<'_>) -> Option<(usize, &StreamRoute, &RouteTarget)> {
        let index = self.router.find(input)?;
        Some((index, &self.routes[index], &self.targets[index]))
    }

    /// Keys of the upstreams some route uses (sorted).
    pub fn upstream_keys(&self) -> &[String] {
        &self.upstream_keys
    }
}

fn route_target(
    route: &StreamRoute,
    upstreams: &HashMap<&str, Arc<ResolvedUpstream>>,
    services: &HashMap<&str, &Value>,
    resolve: Resolver<'_>,
    warnings: &mut Vec<String>,
) -> RouteTarget {
    let by_id = |id: &str| match upstreams.get(id) {
        Some(u) => RouteTarget::Upstream(u.clone()),
        None => RouteTarget::Unavailable(format!("failed to find upstream by id: {id}")),
    };
    // APISIX's precedence (spec §4.2): upstream_id wins; then the route's inline
    // upstream; then the service's inline upstream, then the service's upstream_id.
    if let Some(id) = &route.upstream_id {
        return by_id(id);
    }
    if let Some(config) = &route.upstream {
        let key = format!("/apisix/stream_routes/{}", route.id);
        return RouteTarget::Upstream(Arc::new(resolve_upstream(key, config.clone(), resolve, warnings)));
    }
    if let Some(service_id) = &route.service_id {
        let Some(service) = services.get(service_id.as_str()) else {
            return RouteTarget::Unavailable(format!("failed to fetch service configuration by id: {service_id}"));
        };
        if let Some(inline) = service.get("upstream") {
            return match Upstream::from_json(inline) {
                Ok(config) => {
                    let key = format!("/apisix/services/{service_id}");
                    RouteTarget::Upstream(Arc::new(resolve_upstream(key, config, resolve, warnings)))
                }
                Err(e) => RouteTarget::Unavailable(format!("invalid upstream in service [{service_id}]: {e}")),
            };
        }
        if let Some(id) = service.get("upstream_id").and_then(crate::model::json::id_string) {
            return by_id(&id);
        }
    }
    RouteTarget::Unavailable("missing upstream configuration in Route or Service".into())
}

fn resolve_upstream(
    key: String,
    config: Upstream,
    resolve: Resolver<'_>,
    warnings: &mut Vec<String>,
) -> ResolvedUpstream {
    let mut resolved = ResolvedUpstream { key, config, addrs: Vec::new(), weights: Vec::new(), priorities: Vec::new() };
    for node in &resolved.config.nodes {
        let ip = match node.bare_host().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => resolve(node.bare_host()).into_iter().next(),
        };
        match ip {
            Some(ip) => {
                resolved.addrs.push(SocketAddr::new(ip, node.port));
                resolved.weights.push(node.weight);
                resolved.priorities.push(node.priority);
            }
            None => warnings.push(format!(
                "{}: failed to resolve node {}; it is left out",
                resolved.key,
                node.address_text()
            )),
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_resolve_upstream_ids_and_keep_key_order() {
        let resources = Resources {
            stream_routes: vec![
                ("2".into(), json!({"upstream_id": "u1"})),
                ("10".into(), json!({"upstream": {"nodes": {"localhost:80": 1}}})),
                ("3".into(), json!({"upstream_id": "missing"})),
                ("4".into(), json!({"server_port": 70000})),
            ],
            upstreams: vec![("u1".into(), json!({"nodes": {"127.0.0.1:1995": 1}}))],
            services: vec![],
        };
        let mut resolver = |host: &str| {
            if host == "localhost" {
                vec!["127.0.0.1".parse().unwrap()]
            } else {
                vec![]
            }
        };
        let (snapshot, warnings) = Snapshot::build(1, &resources, &mut resolver);
        let ids: Vec<_> = snapshot.routes().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["10", "2", "3"], "byte order of ids, invalid route skipped");
        assert_eq!(warnings.len(), 1);
        assert!(
            matches!(&snapshot.targets[0], RouteTarget::Upstream(u) if u.addrs == ["127.0.0.1:80".parse().unwrap()])
        );
        assert!(
            matches!(&snapshot.targets[2], RouteTarget::Unavailable(m) if m == "failed to find upstream by id: missing")
        );
    }
}
