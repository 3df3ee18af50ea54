//! Every bug the simulator or the property tests found, kept as the input (or
//! seed) that found it. See FOUND.md for the story of each.

use serde_json::json;
use strait_engine::model::Upstream;

/// FOUND.md #1: `Duration::from_secs_f64` panicked on a timeout too large for a
/// Duration, so one Admin API write could crash the process.
#[test]
fn huge_timeouts_are_rejected_not_a_panic() {
    for value in [
        json!({"nodes": {}, "timeout": {"connect": 1e20, "send": 1, "read": 1}}),
        json!({"nodes": {"10.0.0.1:80": 1}, "timeout": {"connect": 1, "send": 1e300, "read": 1}}),
        json!({"nodes": {"10.0.0.1:80": 1}, "retry_timeout": 1e20}),
    ] {
        let error = Upstream::from_json(&value).expect_err("a timeout past Duration's range is invalid");
        assert!(error.contains("at most"), "{error}");
    }
}

/// FOUND.md #2: a positive timeout below a nanosecond became a zero Duration.
#[test]
fn sub_nanosecond_timeouts_are_rejected() {
    let value = json!({"nodes": {"10.0.0.1:80": 1}, "timeout": {"connect": 1, "send": 1, "read": 4.2e-309}});
    let error = Upstream::from_json(&value).expect_err("a timeout that rounds to zero is invalid");
    assert!(error.contains("one nanosecond"), "{error}");
}
