//! Config objects as APISIX defines them (`stream_route`, `upstream`), parsed
//! and validated from their JSON form. This is the one definition of a valid
//! object: the Admin API, the YAML loaders and the fuzzers all call it.
//!
//! Messages follow APISIX's jsonschema wording (spec §2.3) without the
//! `invalid configuration: ` prefix, which the Admin API adds.

pub mod ip;
pub mod json;
pub mod route;
pub mod service;
pub mod ssl;
pub mod upstream;

pub use ip::IpMatch;
pub use route::StreamRoute;
pub use service::Service;
pub use ssl::{Ssl, SslClient, SslType};
pub use upstream::{BalancerType, Node, Upstream, UpstreamTimeout, UpstreamTls};
