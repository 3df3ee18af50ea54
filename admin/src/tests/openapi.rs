//! admin/openapi.yaml describes what the handler serves: every path and method
//! in it is routed, and every resource type is in it.

use super::*;
use crate::kind::Kind;

const SPEC: &str = include_str!("../../openapi.yaml");

fn spec() -> serde_yaml::Value {
    serde_yaml::from_str(SPEC).expect("openapi.yaml is valid YAML")
}

#[test]
fn every_path_in_openapi_yaml_is_routed() {
    let spec = spec();
    let paths = spec["paths"].as_mapping().expect("paths is a mapping");
    let mut h = Harness::new();
    let mut checked = 0;
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        let url = path.replace("{id}", "x").replace("{sub_path}", "nodes");
        for (method, operation) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_ascii_uppercase();
            if method == "PARAMETERS" {
                continue;
            }
            if let Some(reference) = operation.get("$ref").and_then(|r| r.as_str()) {
                let name = reference.strip_prefix("#/x-operations/").expect("operations live in x-operations");
                assert!(spec["x-operations"].get(name).is_some(), "{path} {method}: dangling {reference}");
            }
            let response = h.raw(&method, &url, &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", b"{}");
            let unrouted =
                response.body.contains("404 Not Found") || response.body.contains("Unsupported resource type");
            assert!(!unrouted, "{method} {path} is in openapi.yaml but not routed: {}", response.body);
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} operations found");
}

#[test]
fn every_resource_type_is_in_openapi_yaml() {
    let spec = spec();
    for kind in Kind::ALL {
        for suffix in ["", "/{id}", "/{id}/{sub_path}"] {
            let path = format!("/apisix/admin/{}{suffix}", kind.segment());
            assert!(spec["paths"].get(path.as_str()).is_some(), "{path} is missing from openapi.yaml");
        }
    }
}
