//! Stream route matching (spec §4.1).
//!
//! `Router` is compiled once per config snapshot. It is indexed by server port
//! and, within a port, by `remote_addr` prefix (one hash map per prefix length
//! in use), so a lookup costs a few hash probes however many routes there are,
//! instead of a scan.
//! `reference::match_route` follows the spec literally (a linear scan); tests
//! and fuzzers check that the two always agree.
//!
//! Order: routes are kept in key order (ids compared as byte strings, `1`,
//! `10`, `2`), which is the order APISIX uses after a full load. Among
//! overlapping routes the first in that order wins.

pub mod reference;

use crate::model::StreamRoute;
use std::collections::HashMap;
use std::net::IpAddr;

/// What the router sees of a connection.
#[derive(Clone, Copy, Debug)]
pub struct MatchInput<'a> {
    pub server_addr: IpAddr,
    pub server_port: u16,
    pub remote_addr: IpAddr,
    /// Lower-cased server name from the TLS ClientHello, if any.
    pub sni: Option<&'a str>,
}

pub struct Router {
    filters: Vec<AddressFilter>,
    /// Routes without `sni`, by server port; `None` = routes without `server_port`.
    plain_by_port: HashMap<Option<u16>, Bucket>,
    /// Routes with `sni`, grouped by pattern, each group in route order.
    sni_groups: HashMap<String, SniGroup>,
}

#[derive(Default)]
struct SniGroup {
    by_port: HashMap<Option<u16>, Bucket>,
}

/// The routes of one port (and SNI pattern), indexed by `remote_addr`.
#[derive(Default)]
struct Bucket {
    /// Routes without `remote_addr`, in order.
    any_remote: Vec<u32>,
    /// Routes with `remote_addr`: per (IPv6?, prefix length), the masked
    /// network → its routes in order.
    by_prefix: Vec<(bool, u8, HashMap<IpAddr, Vec<u32>>)>,
}

impl Bucket {
    fn push(&mut self, index: u32, remote: Option<crate::model::IpMatch>) {
        let Some(remote) = remote else {
            self.any_remote.push(index);
            return;
        };
        let key = (remote.network().is_ipv6(), remote.prefix_len());
        let position = match self.by_prefix.iter().position(|(v6, len, _)| (*v6, *len) == key) {
            Some(position) => position,
            None => {
                self.by_prefix.push((key.0, key.1, HashMap::new()));
                self.by_prefix.len() - 1
            }
        };
        self.by_prefix[position].2.entry(remote.network()).or_default().push(index);
    }

    /// The lowest route index in this bucket whose filters accept `input`.
    fn first(&self, filters: &[AddressFilter], input: &MatchInput<'_>) -> Option<u32> {
        let accepts = |i: &&u32| filters[**i as usize].accepts(input);
        let mut best = self.any_remote.iter().find(accepts).copied();
        let client = unmapped(input.remote_addr);
        for (v6, len, networks) in &self.by_prefix {
            if *v6 != client.is_ipv6() {
                continue;
            }
            if let Some(list) = networks.get(&masked(client, *len)) {
                // Lists are in order: only an earlier route than `best` can matter.
                if let Some(&i) = list.iter().take_while(|&&i| best.is_none_or(|b| i < b)).find(accepts) {
                    best = Some(i);
                }
            }
        }
        best
    }
}

/// IPv4 clients on a dual-stack socket show as ::ffff:a.b.c.d; rules are written in IPv4.
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct AddressFilter {
    pub remote_addr: Option<crate::model::IpMatch>,
    pub server_addr: Option<crate::model::IpMatch>,
    pub server_port: Option<u16>,
}

impl AddressFilter {
    pub(crate) fn of(route: &StreamRoute) -> AddressFilter {
        AddressFilter { remote_addr: route.remote_addr, server_addr: route.server_addr, server_port: route.server_port }
    }

    pub(crate) fn accepts(&self, input: &MatchInput<'_>) -> bool {
        self.server_port.is_none_or(|p| p == input.server_port)
            && self.server_addr.is_none_or(|m| m.contains(input.server_addr))
            && self.remote_addr.is_none_or(|m| m.contains(input.remote_addr))
    }
}

impl Router {
    /// Compiles routes given in match order.
    pub fn new(routes: &[StreamRoute]) -> Router {
        let mut router = Router {
            filters: Vec::with_capacity(routes.len()),
            plain_by_port: HashMap::new(),
            sni_groups: HashMap::new(),
        };
        for (index, route) in routes.iter().enumerate() {
            let index = index as u32;
            router.filters.push(AddressFilter::of(route));
            if route.snis.is_empty() {
                router.plain_by_port.entry(route.server_port).or_default().push(index, route.remote_addr);
            } else {
                for pattern in &route.snis {
                    router
                        .sni_groups
                        .entry(pattern.clone())
                        .or_default()
                        .by_port
                        .entry(route.server_port)
                        .or_default()
                        .push(index, route.remote_addr);
                }
            }
        }
        router
    }

    /// The index (in the order given to `new`) of the route this connection takes.
    pub fn find(&self, input: &MatchInput<'_>) -> Option<usize> {
        if let Some(sni) = input.sni {
            if !self.sni_groups.is_empty() {
                for pattern in reference::sni_candidates(sni) {
                    if let Some(group) = self.sni_groups.get(pattern.as_ref()) {
                        if let Some(found) = self.first_in(&group.by_port, input) {
                            return Some(found);
                        }
                    }
                }
            }
        }
        self.first_in(&self.plain_by_port, input)
    }

    /// The first route (lowest index) among those for this port and those for any port.
    fn first_in(&self, by_port: &HashMap<Option<u16>, Bucket>, input: &MatchInput<'_>) -> Option<usize> {
        let pick = |bucket: Option<&Bucket>| bucket.and_then(|b| b.first(&self.filters, input));
        let exact = pick(by_port.get(&Some(input.server_port)));
        let any = pick(by_port.get(&None));
        match (exact, any) {
            (Some(a), Some(b)) => Some(a.min(b) as usize),
            (a, b) => a.or(b).map(|i| i as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes(list: &[serde_json::Value]) -> Vec<StreamRoute> {
        list.iter().enumerate().map(|(i, v)| StreamRoute::from_json(&i.to_string(), v).unwrap()).collect()
    }

    fn input<'a>(server: &str, port: u16, remote: &str, sni: Option<&'a str>) -> MatchInput<'a> {
        MatchInput {
            server_addr: server.parse().unwrap(),
            server_port: port,
            remote_addr: remote.parse().unwrap(),
            sni,
        }
    }

    #[test]
    fn each_filter_narrows_the_match() {
        let r = routes(&[
            json!({"server_port": 9101, "server_addr": "127.0.0.1"}),
            json!({"remote_addr": "10.0.0.0/8"}),
            json!({"remote_addr": "2001:db8::/32"}),
        ]);
        let router = Router::new(&r);
        assert_eq!(router.find(&input("127.0.0.1", 9101, "1.1.1.1", None)), Some(0));
        assert_eq!(router.find(&input("127.0.0.2", 9101, "1.1.1.1", None)), None);
        assert_eq!(router.find(&input("127.0.0.1", 9100, "10.1.1.1", None)), Some(1));
        assert_eq!(router.find(&input("::1", 9100, "2001:db8::1", None)), Some(2));
        assert_eq!(router.find(&input("127.0.0.1", 9100, "1.1.1.1", None)), None);
    }

    #[test]
    fn first_route_in_order_wins_across_port_lists() {
        let r = routes(&[json!({}), json!({"server_port": 9100})]);
        assert_eq!(Router::new(&r).find(&input("127.0.0.1", 9100, "1.1.1.1", None)), Some(0));
    }

    #[test]
    fn sni_routes_exact_then_longest_wildcard_then_star_then_plain() {
        let r = routes(&[
            json!({"sni": "*"}),
            json!({"sni": "*.test.com"}),
            json!({"sni": "a.test.com"}),
            json!({"sni": "*.b.test.com"}),
            json!({}),
        ]);
        let router = Router::new(&r);
        assert_eq!(router.find(&input("127.0.0.1", 1, "1.1.1.1", Some("a.test.com"))), Some(2));
        assert_eq!(router.find(&input("127.0.0.1", 1, "1.1.1.1", Some("x.b.test.com"))), Some(3));
        assert_eq!(router.find(&input("127.0.0.1", 1, "1.1.1.1", Some("z.test.com"))), Some(1));
        assert_eq!(router.find(&input("127.0.0.1", 1, "1.1.1.1", Some("other.org"))), Some(0));
        assert_eq!(router.find(&input("127.0.0.1", 1, "1.1.1.1", None)), Some(4));
    }
}
