//! Where this node's configuration comes from and whether it is current, for
//! the control API (`GET /v1/config_source`): while etcd is away a node keeps
//! serving its last good config, and says so here as well as in its log.

use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Instant;

pub struct SourceStatus {
    /// `file` (the embedded store), `etcd` or `yaml` (standalone).
    source: &'static str,
    state: Mutex<State>,
}

#[derive(Clone, Default)]
struct State {
    connected: bool,
    /// Since when the served config may be behind its source.
    stale_since: Option<Instant>,
    last_error: Option<String>,
    revision: u64,
}

impl SourceStatus {
    pub fn new(source: &'static str) -> SourceStatus {
        SourceStatus { source, state: Mutex::new(State { connected: true, ..State::default() }) }
    }

    pub fn update(&self, connected: bool, stale_since: Option<Instant>, last_error: Option<String>, revision: u64) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State { connected, stale_since, last_error, revision };
    }

    pub fn to_json(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        json!({
            "source": self.source,
            "connected": state.connected,
            "stale_for_seconds": state.stale_since.map(|since| since.elapsed().as_secs()),
            "last_error": state.last_error,
            "revision": state.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_stale_source_and_its_error() {
        let status = SourceStatus::new("etcd");
        assert_eq!(status.to_json()["connected"], true);
        status.update(false, Some(Instant::now()), Some("connection refused".into()), 41);
        let json = status.to_json();
        assert_eq!((json["connected"].clone(), json["revision"].clone()), (json!(false), json!(41)));
        assert_eq!(json["last_error"], "connection refused");
        assert_eq!(json["stale_for_seconds"], 0);
    }
}
