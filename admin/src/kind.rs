//! The resource types the Admin API serves, with the names APISIX uses for
//! them in URLs, etcd keys and messages.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    StreamRoutes,
    Upstreams,
    Services,
    Ssls,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::StreamRoutes, Kind::Upstreams, Kind::Services, Kind::Ssls];

    /// The URL segment after `/apisix/admin/`.
    pub fn from_segment(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == segment)
    }

    /// The URL segment, also the store's type name and the etcd key folder.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::StreamRoutes => "stream_routes",
            Kind::Upstreams => "upstreams",
            Kind::Services => "services",
            Kind::Ssls => "ssls",
        }
    }

    /// The word APISIX's messages use: `missing stream route id`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::StreamRoutes => "stream route",
            Kind::Upstreams => "upstream",
            Kind::Services => "service",
            Kind::Ssls => "ssl",
        }
    }
}
