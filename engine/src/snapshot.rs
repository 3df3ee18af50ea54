//! A config snapshot: the validated, compiled form of every stream route and
//! upstream, immutable and shared by all workers (`Arc<Snapshot>`). Building
//! one is the only place where config objects turn into engine state.

use crate::action::DatagramDrop;
use crate::balancer::{HashRing, LoadBoard};
use crate::health::{HealthBoard, NodeHealth};
use crate::model::{BalancerType, StreamRoute, Upstream};
use crate::router::{MatchInput, Router};
use crate::tls::certs::CertStore;
use crate::tls::TlsEnv;
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

/// The raw objects of one config version, as stored (JSON, ids as key suffixes).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub stream_routes: Vec<(String, Value)>,
    pub upstreams: Vec<(String, Value)>,
    pub services: Vec<(String, Value)>,
    /// `/ssls`: certificates for TLS termination and upstream mTLS.
    pub ssls: Vec<(String, Value)>,
}

/// An upstream with its nodes' addresses resolved and its shared state attached.
#[derive(Debug)]
pub struct ResolvedUpstream {
    /// The key its balancer state is kept under: `/apisix/upstreams/<id>` or,
    /// for an inline upstream, `/apisix/stream_routes/<id>`.
    pub key: String,
    pub config: Upstream,
    /// One address per node of `config.nodes` that resolved; the vectors below
    /// are parallel to it.
    pub addrs: Vec<SocketAddr>,
    pub weights: Vec<u32>,
    pub priorities: Vec<i32>,
    /// `host:port` as configured (the chash node id, and what logs show).
    pub names: Vec<String>,
    /// Per node, when `config.checks` is set (else empty): shared with every
    /// upstream that has the same node and settings, and with every worker.
    pub health: Vec<Arc<NodeHealth>>,
    /// Per node, for least_conn (else empty): connections in flight, process-wide.
    pub in_flight: Vec<Arc<AtomicU32>>,
    /// For chash: the APISIX-compatible ring.
    pub ring: Option<HashRing>,
    /// For `scheme: tls`: the client config, built once per snapshot, or why
    /// it could not be built (connections to this upstream are then refused).
    pub tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
}

impl PartialEq for ResolvedUpstream {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.config == other.config && self.addrs == other.addrs
    }
}

/// State shared by every worker's engine and every snapshot of a process:
/// node health and least_conn counts.
#[derive(Clone, Default)]
pub struct SharedState {
    pub health: HealthBoard,
    pub load: LoadBoard,
    /// TLS's crypto and time providers and the system's CA bundle.
    pub tls: TlsEnv,
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
    /// Every upstream of this config: `/upstreams` objects and inline ones.
    upstreams: Vec<Arc<ResolvedUpstream>>,
    /// Server certificates by SNI and client certificates by id.
    certs: CertStore,
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
            upstreams: Vec::new(),
            certs: CertStore::default(),
        }
    }

    /// Builds a snapshot with fresh shared state (tests, tools). A running
    /// process uses `build_with` so health and counts carry over.
    pub fn build(version: u64, resources: &Resources, resolve: Resolver<'_>) -> (Snapshot, Vec<String>) {
        Snapshot::build_with(version, resources, resolve, &SharedState::default())
    }

    /// Builds a snapshot. Invalid objects are skipped and reported in the
    /// returned warnings (the Admin API validates before storing, so this only
    /// happens with hand-edited or foreign data).
    pub fn build_with(
        version: u64,
        resources: &Resources,
        resolve: Resolver<'_>,
        shared: &SharedState,
    ) -> (Snapshot, Vec<String>) {
        let mut warnings = Vec::new();
        let certs = CertStore::build(&resources.ssls, &shared.tls, &mut warnings);
        let mut builder = Builder { resolve, shared, warnings, all: Vec::new(), certs: &certs };
        let mut upstreams: HashMap<&str, Arc<ResolvedUpstream>> = HashMap::new();
        for (id, value) in &resources.upstreams {
            match Upstream::from_json(value) {
                Ok(config) => {
                    upstreams.insert(id, builder.upstream(format!("/apisix/upstreams/{id}"), config));
                }
                Err(e) => builder.warnings.push(format!("skipped invalid upstream [{id}]: {e}")),
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
                    builder.warnings.push(format!("skipped invalid stream route [{id}]: {e}"));
                    continue;
                }
            };
            targets.push(builder.route_target(&route, &upstreams, &services));
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
        let Builder { warnings, all, .. } = builder;
        (Snapshot { version, routes, targets, router, upstream_keys, upstreams: all, certs }, warnings)
    }

    pub fn routes(&self) -> &[StreamRoute] {
        &self.routes
    }

    /// The matched route's index, id and target.
    pub fn find_route(&self, input: &MatchInput<'_>) -> Option<(usize, &StreamRoute, &RouteTarget)> {
        let index = self.router.find(input)?;
        Some((index, &self.routes[index], &self.targets[index]))
    }

    /// The route a new connection takes and its usable upstream. Refusals are
    /// logged here, with the route's id.
    pub fn route(&self, input: &MatchInput<'_>) -> Result<(&StreamRoute, Arc<ResolvedUpstream>), DatagramDrop> {
        let (_, route, target) = self.find_route(input).ok_or(DatagramDrop::NoRoute)?;
        match target {
            RouteTarget::Upstream(upstream) if upstream.addrs.is_empty() => {
                log::error!("stream route [{}]: no valid upstream node", route.id);
                Err(DatagramDrop::NoUpstream)
            }
            RouteTarget::Upstream(upstream) => match &upstream.tls {
                Some(Err(why)) => {
                    log::error!("stream route [{}]: TLS to the upstream cannot be set up: {why}", route.id);
                    Err(DatagramDrop::NoUpstream)
                }
                _ => Ok((route, upstream.clone())),
            },
            RouteTarget::Unavailable(why) => {
                log::error!("stream route [{}]: {why}", route.id);
                Err(DatagramDrop::NoUpstream)
            }
        }
    }

    /// The certificate store of this config.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// The target of the route at `index` (as returned by `find_route`).
    pub fn target(&self, index: usize) -> &RouteTarget {
        &self.targets[index]
    }

    /// Keys of the upstreams some route uses (sorted).
    pub fn upstream_keys(&self) -> &[String] {
        &self.upstream_keys
    }

    /// Every upstream of this config, `/upstreams` objects first, then inline ones.
    pub fn upstreams(&self) -> &[Arc<ResolvedUpstream>] {
        &self.upstreams
    }
}

struct Builder<'a, 'r> {
    resolve: Resolver<'r>,
    shared: &'a SharedState,
    warnings: Vec<String>,
    all: Vec<Arc<ResolvedUpstream>>,
    certs: &'a CertStore,
}

impl Builder<'_, '_> {
    fn route_target(
        &mut self,
        route: &StreamRoute,
        upstreams: &HashMap<&str, Arc<ResolvedUpstream>>,
        services: &HashMap<&str, &Value>,
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
            return RouteTarget::Upstream(self.upstream(format!("/apisix/stream_routes/{}", route.id), config.clone()));
        }
        if let Some(service_id) = &route.service_id {
            let Some(service) = services.get(service_id.as_str()) else {
                return RouteTarget::Unavailable(format!("failed to fetch service configuration by id: {service_id}"));
            };
            if let Some(inline) = service.get("upstream") {
                return match Upstream::from_json(inline) {
                    Ok(config) => {
                        RouteTarget::Upstream(self.upstream(format!("/apisix/services/{service_id}"), config))
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

    /// Resolves node hosts and attaches shared state (health, counts, ring).
    fn upstream(&mut self, key: String, config: Upstream) -> Arc<ResolvedUpstream> {
        let mut resolved = ResolvedUpstream {
            key,
            config,
            addrs: Vec::new(),
            weights: Vec::new(),
            priorities: Vec::new(),
            names: Vec::new(),
            health: Vec::new(),
            in_flight: Vec::new(),
            ring: None,
            tls: None,
        };
        if resolved.config.scheme.as_deref() == Some("tls") {
            let built = crate::tls::upstream::client_config(resolved.config.tls.as_ref(), self.certs, &self.shared.tls);
            if let Err(why) = &built {
                self.warnings.push(format!("{}: TLS to the upstream cannot be set up: {why}", resolved.key));
            }
            resolved.tls = Some(built);
        }
        for node in &resolved.config.nodes {
            let ip = match node.bare_host().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => (self.resolve)(node.bare_host()).into_iter().next(),
            };
            match ip {
                Some(ip) => {
                    resolved.addrs.push(SocketAddr::new(ip, node.port));
                    resolved.weights.push(node.weight);
                    resolved.priorities.push(node.priority);
                    resolved.names.push(node.address_text());
                }
                None => self.warnings.push(format!(
                    "{}: failed to resolve node {}; it is left out",
                    resolved.key,
                    node.address_text()
                )),
            }
        }
        if let Some(checks) = &resolved.config.checks {
            resolved.health = resolved.addrs.iter().map(|addr| self.shared.health.node(*addr, checks)).collect();
        }
        match resolved.config.balancer {
            BalancerType::LeastConn => {
                resolved.in_flight = resolved.addrs.iter().map(|addr| self.shared.load.counter(*addr)).collect();
            }
            BalancerType::Chash => resolved.ring = Some(HashRing::new(&resolved.names, &resolved.weights)),
            BalancerType::RoundRobin | BalancerType::Ewma => {}
        }
        let resolved = Arc::new(resolved);
        self.all.push(resolved.clone());
        resolved
    }
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
            ..Default::default()
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
