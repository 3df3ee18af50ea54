//! The compiled router against the reference matcher, over random route sets
//! and connections (v4 and v6, single addresses and CIDRs, SNI patterns).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use strait_engine::router::{reference, MatchInput, Router};
use strait_engine::{Resources, Snapshot};

/// Addresses from a deliberately small space, so filters and inputs overlap.
fn v4() -> impl Strategy<Value = String> {
    (0u8..3, 0u8..4).prop_map(|(c, d)| format!("10.0.{c}.{d}"))
}
fn v6() -> impl Strategy<Value = String> {
    (0u16..3, 0u16..4).prop_map(|(c, d)| format!("2001:db8:{c}::{d}"))
}
fn ip_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        v4(),
        v6(),
        (v4(), prop::sample::select(vec![0u8, 8, 16, 23, 24, 30, 31, 32])).prop_map(|(a, p)| format!("{a}/{p}")),
        (v6(), prop::sample::select(vec![0u8, 32, 47, 48, 64, 127, 128])).prop_map(|(a, p)| format!("{a}/{p}")),
    ]
}
fn input_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        v4().prop_map(|a| a.parse().unwrap()),
        v6().prop_map(|a| a.parse().unwrap()),
        // An IPv4 client on a dual-stack socket.
        v4().prop_map(|a| format!("::ffff:{a}").parse().unwrap()),
    ]
}

const SNI_PATTERNS: [&str; 9] =
    ["a.test.com", "*.test.com", "*test.com", "*.b.test.com", "*", "x.org", "*.org", "A.Test.Com", "*.com"];
const SNIS: [&str; 7] = ["a.test.com", "x.b.test.com", "footest.com", "x.org", "other.net", "test.com", "b.test.com"];
const PORTS: [u16; 3] = [9100, 9101, 9102];
const ROUTE_IDS: [&str; 10] = ["1", "2", "10", "11", "3", "a", "b7", "20", "100", "9"];

fn route() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.4, ip_filter()),
        prop::option::weighted(0.3, ip_filter()),
        prop::option::weighted(0.4, prop::sample::select(PORTS.to_vec())),
        prop::option::weighted(0.3, prop::collection::vec(prop::sample::select(SNI_PATTERNS.to_vec()), 1..3)),
        any::<bool>(),
    )
        .prop_map(|(remote, server, port, snis, single)| {
            let mut r = Map::new();
            if let Some(a) = remote {
                r.insert("remote_addr".into(), json!(a));
            }
            if let Some(a) = server {
                r.insert("server_addr".into(), json!(a));
            }
            if let Some(p) = port {
                r.insert("server_port".into(), json!(p));
            }
            match snis {
                Some(list) if single => {
                    r.insert("sni".into(), json!(list[0]));
                }
                Some(list) => {
                    r.insert("snis".into(), json!(list));
                }
                None => {}
            }
            r.insert("upstream".into(), json!({"nodes": {"10.9.0.1:80": 1}}));
            Value::Object(r)
        })
}

fn routes() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map(prop::sample::select(ROUTE_IDS.to_vec()), route(), 0..8)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[derive(Debug, Clone)]
struct Conn {
    server: IpAddr,
    port: u16,
    remote: IpAddr,
    sni: Option<&'static str>,
}

fn conn() -> impl Strategy<Value = Conn> {
    (
        input_ip(),
        prop::sample::select(PORTS.to_vec()),
        input_ip(),
        prop::option::of(prop::sample::select(SNIS.to_vec())),
    )
        .prop_map(|(server, port, remote, sni)| Conn { server, port, remote, sni })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_router_agrees_with_the_reference(routes in routes(), conns in prop::collection::vec(conn(), 1..16)) {
        let resources = Resources { stream_routes: routes, ..Resources::default() };
        let (snapshot, warnings) = Snapshot::build(1, &resources, &mut |_| Vec::new());
        prop_assert!(warnings.is_empty(), "generated routes are valid: {:?}", warnings);
        let router = Router::new(snapshot.routes());
        for c in &conns {
            let input = MatchInput { server_addr: c.server, server_port: c.port, remote_addr: c.remote, sni: c.sni };
            let want = reference::match_route(snapshot.routes(), &input);
            prop_assert_eq!(router.find(&input), want, "Router::find for {:?}", c);
            prop_assert_eq!(snapshot.find_route(&input).map(|(i, _, _)| i), want, "Snapshot::find_route for {:?}", c);
        }
    }
}
