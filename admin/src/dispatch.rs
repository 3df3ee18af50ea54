//! The request handler: one function from a request to a response, with no
//! socket in sight, so every status code is testable directly.
//!
//! Order of checks (spec §2.1): peer allowlist, `HEAD /apisix/admin`, CORS
//! preflight, method, API key, stream mode, resource type, body size, body
//! JSON, `ttl`, then the method handler in resources.rs.

use crate::applied::AppliedRevision;
use crate::auth;
use crate::config_store::ConfigStore;
use crate::envelope::Response;
use crate::kind::Kind;
use crate::request::Request;
use crate::store::FileStore;
use crate::OnChange;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use strait_engine::config::{AdminSettings, ProxyMode};

/// APISIX's admin body limit (spec §2.1).
pub const BODY_BYTES_MAX: usize = 1536 * 1024;

/// Objects per resource type: the store is rewritten whole on each write,
/// so its size is bounded to keep a write's cost bounded too.
pub const OBJECTS_PER_TYPE_MAX: usize = 100_000;

/// Longest `?ttl=` accepted (a year), so the lease request stays meaningful.
pub const TTL_SECONDS_MAX: u64 = 365 * 86_400;

const ALLOW_METHODS: &str = "POST, GET, PUT, OPTIONS, DELETE, PATCH";
const API_METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

/// How a stored write reaches this node's workers.
pub enum Publish {
    /// The embedded store: the admin thread hands the complete new set to the
    /// callback itself, before answering.
    Direct(OnChange),
    /// A shared store (etcd): the node's syncer publishes what it reads back;
    /// the admin thread waits, at most `limit`, until the syncer has applied
    /// the write's revision, so an answer means "this node routes with it"
    /// (read-your-writes, which APISIX does not promise).
    AwaitApplied { applied: Arc<AppliedRevision>, limit: Duration },
}

pub struct Admin<S: ConfigStore = FileStore> {
    pub(crate) settings: AdminSettings,
    pub(crate) proxy_mode: ProxyMode,
    pub(crate) store: S,
    pub(crate) publish: Publish,
    /// Set on nodes whose objects come from elsewhere (data_plane, standalone
    /// file): every write is refused with this text.
    pub(crate) read_only: Option<String>,
    /// Unix seconds for create_time/update_time; replaceable in tests.
    pub(crate) clock: fn() -> u64,
}

fn system_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The parts of `/apisix/admin/<resource>/<id>/<sub/path>`.
pub struct Target<'a> {
    pub kind: Kind,
    pub id: Option<&'a str>,
    pub sub_path: Option<&'a str>,
}

impl<S: ConfigStore> Admin<S> {
    /// An Admin that publishes through `on_change` after each write (the embedded store).
    #[cfg(test)]
    pub fn new(settings: AdminSettings, proxy_mode: ProxyMode, store: S, on_change: OnChange) -> Admin<S> {
        Admin::with_publish(settings, proxy_mode, store, Publish::Direct(on_change))
    }

    pub fn with_publish(settings: AdminSettings, proxy_mode: ProxyMode, store: S, publish: Publish) -> Admin<S> {
        Admin { settings, proxy_mode, store, publish, read_only: None, clock: system_clock }
    }

    /// Refuses every write with `reason` (data-plane and standalone nodes).
    pub fn read_only(mut self, reason: String) -> Admin<S> {
        self.read_only = Some(reason);
        self
    }

    /// Answers one request, common headers included. For a write, the store
    /// is durable and `on_change` has returned before this does.
    pub fn handle(&mut self, request: &Request<'_>) -> Response {
        let response = self.route(request);
        self.with_common_headers(response)
    }

    /// Adds the headers every answer carries (spec §2.1).
    pub(crate) fn with_common_headers(&self, mut response: Response) -> Response {
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("Server", format!("Strait/{}", env!("CARGO_PKG_VERSION"))),
            ("X-API-VERSION", "v3".to_string()),
        ];
        if self.settings.cors {
            headers.extend([
                ("Access-Control-Allow-Origin", "*".to_string()),
                ("Access-Control-Allow-Credentials", "true".to_string()),
                ("Access-Control-Expose-Headers", "*".to_string()),
                ("Access-Control-Max-Age", "3600".to_string()),
            ]);
        }
        headers.append(&mut response.headers);
        response.headers = headers;
        response
    }

    fn route(&mut self, request: &Request<'_>) -> Response {
        if let Err(denied) = auth::check_peer(&self.settings.allow_admin, request.peer) {
            return denied;
        }
        let rest = match request.path.strip_prefix("/apisix/admin") {
            Some("") if request.method == "HEAD" => return Response::empty(200),
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => return Response::not_found(),
        };
        if request.method == "OPTIONS" && self.settings.cors {
            let mut response = Response::empty(200);
            response.headers.push(("Access-Control-Allow-Methods", ALLOW_METHODS.to_string()));
            return response;
        }
        if !API_METHODS.contains(&request.method) {
            return Response::not_found();
        }
        if let Err(refused) = auth::check_token(&self.settings, request) {
            return refused;
        }
        if request.method != "GET" {
            if let Some(reason) = &self.read_only {
                return Response::error(403, reason.clone());
            }
        }

        let mut segments = rest.splitn(3, '/');
        let resource = segments.next().unwrap_or("");
        let id = segments.next().filter(|s| !s.is_empty());
        let sub_path = segments.next().filter(|s| !s.is_empty());
        // APISIX refuses every stream_routes request, GET included, when the
        // stream subsystem is off (spec §2.1 step 2).
        if resource == "stream_routes" && !self.proxy_mode.stream_enabled() {
            return Response::error(400, "stream mode is disabled, can not add stream routes");
        }
        let Some(kind) = Kind::from_segment(resource) else {
            return Response::error(404, format!("Unsupported resource type: {resource}"));
        };

        if request.body.len() > BODY_BYTES_MAX {
            return Response::error(
                413,
                format!(
                    "invalid request body: request size {} is greater than the maximum size {BODY_BYTES_MAX} allowed",
                    request.body.len()
                ),
            );
        }
        let body = match parse_body(request.body) {
            Ok(body) => body,
            Err(response) => return response,
        };
        let mut ttl = None;
        if let Some(text) = request.arg("ttl") {
            let Some(seconds) = text.trim().parse::<f64>().ok().filter(|s| s.is_finite()) else {
                return Response::error(400, "invalid argument ttl: should be a number");
            };
            // APISIX attaches an etcd lease; the file store has no expiry, and
            // silently keeping the object forever would be worse than saying so.
            if !self.store.supports_ttl() {
                return Response::error(400, "invalid argument ttl: not supported by Strait");
            }
            if seconds < 1.0 || seconds > TTL_SECONDS_MAX as f64 {
                return Response::error(400, format!("invalid argument ttl: must be from 1 to {TTL_SECONDS_MAX}"));
            }
            ttl = Some(seconds.ceil() as u64);
        }

        let target = Target { kind, id, sub_path };
        match request.method {
            "GET" => self.get(&target, request),
            "PUT" => self.put(&target, body, ttl),
            "POST" => self.post(&target, body, ttl),
            "DELETE" => self.delete(&target, request),
            "PATCH" => self.patch(&target, body, ttl),
            _ => unreachable!("methods checked against API_METHODS above"),
        }
    }

    /// Makes a stored write reach this node's workers before the answer goes
    /// out: publishes the complete new set (embedded store) or waits for the
    /// syncer to apply `revision` (etcd).
    pub(crate) fn committed(&mut self, revision: u64) {
        match &mut self.publish {
            Publish::Direct(on_change) => match self.store.resources() {
                Ok(resources) => on_change(&resources),
                Err(e) => log::error!("admin write stored but not published: {e}"),
            },
            Publish::AwaitApplied { applied, limit } => {
                if !applied.wait_for(revision, *limit) {
                    log::warn!(
                        "admin write at revision {revision} is stored, but this node has not applied it within {limit:?} \
                         (applied revision {}); answering anyway",
                        applied.get()
                    );
                }
            }
        }
    }

    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }
}

/// An empty body is "no configuration"; anything else must be JSON, whatever
/// the Content-Type says (APISIX ignores it too).
fn parse_body(raw: &[u8]) -> Result<Option<Value>, Response> {
    if raw.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(raw).map(Some).map_err(|e| {
        Response::json(
            400,
            json!({
                "error_msg": format!("invalid request body: {e}"),
                "req_body": String::from_utf8_lossy(raw),
            }),
        )
    })
}
