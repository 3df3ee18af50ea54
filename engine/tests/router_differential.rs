//! The indexed Router always agrees with the spec-literal reference matcher.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strait_engine::model::StreamRoute;
use strait_engine::router::{reference, MatchInput, Router};

/// A few addresses close together, so CIDRs overlap and exact IPs repeat.
fn v4() -> impl Strategy<Value = Ipv4Addr> {
    (0u8..3, 0u8..4).prop_map(|(c, d)| Ipv4Addr::new(10, 0, c, d))
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    (0u16..3, 0u16..4).prop_map(|(c, d)| Ipv6Addr::new(0x2001, 0xdb8, 0, c, 0, 0, 0, d))
}

fn ip_rule() -> impl Strategy<Value = String> {
    prop_oneof![
        v4().prop_map(|a| a.to_string()),
        (v4(), prop_oneof![Just(0u8), Just(8), Just(16), Just(24), Just(30), Just(32)])
            .prop_map(|(a, p)| format!("{a}/{p}")),
        v6().prop_map(|a| a.to_string()),
        (v6(), prop_oneof![Just(0u8), Just(32), Just(64), Just(126), Just(128)]).prop_map(|(a, p)| format!("{a}/{p}")),
    ]
}

fn route() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(ip_rule()),
        proptest::option::of(ip_rule()),
        proptest::option::of(9100u16..9103),
        proptest::option::of(prop_oneof![Just("a.test"), Just("*.test"), Just("*"), Just("*a.test")]),
    )
        .prop_map(|(remote, server, port, sni)| {
            let mut r = json!({});
            if let Some(v) = remote {
                r["remote_addr"] = json!(v);
            }
            if let Some(v) = server {
                r["server_addr"] = json!(v);
            }
            if let Some(v) = port {
                r["server_port"] = json!(v);
            }
            if let Some(v) = sni {
                r["sni"] = json!(v);
            }
            r
        })
}

fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![v4().prop_map(IpAddr::V4), v6().prop_map(IpAddr::V6), v4().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn indexed_router_agrees_with_the_reference(
        bodies in proptest::collection::vec(route(), 0..40),
        connections in proptest::collection::vec((client(), client(), 9100u16..9103, proptest::option::of(prop_oneof![Just("a.test"), Just("b.a.test"), Just("x.org")])), 1..30),
    ) {
        let routes: Vec<StreamRoute> = bodies.iter().enumerate().map(|(i, b)| StreamRoute::from_json(&i.to_string(), b).unwrap()).collect();
        let router = Router::new(&routes);
        for (remote, server, port, sni) in connections {
            let input = MatchInput { server_addr: server, server_port: port, remote_addr: remote, sni };
            prop_assert_eq!(router.find(&input), reference::match_route(&routes, &input), "for {:?}", input);
        }
    }
}
