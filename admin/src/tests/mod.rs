//! Handler tests: the Admin API driven as a function, no socket (except socket.rs).

mod api;
mod auth;
mod openapi;
mod props;
mod socket;

use crate::dispatch::Admin;
use crate::envelope::Response;
use crate::request::Request;
use crate::store::FileStore;
use crate::testutil::TempDir;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use strait_engine::config::{AdminKey, AdminRole, AdminSettings, ProxyMode};
use strait_engine::Resources;

pub const ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
pub const VIEWER_KEY: &str = "4054f7cf07e344346cd3f287985e76a2";
pub const NOW: u64 = 1_700_000_000;

pub fn settings() -> AdminSettings {
    AdminSettings {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: vec![
            AdminKey { name: "admin".into(), key: ADMIN_KEY.into(), role: AdminRole::Admin },
            AdminKey { name: "viewer".into(), key: VIEWER_KEY.into(), role: AdminRole::Viewer },
        ],
        key_required: true,
        allow_admin: Some(vec![strait_engine::model::IpMatch::parse("127.0.0.0/24").unwrap()]),
        cors: true,
    }
}

/// An Admin over a scratch store, recording every published resource set.
pub struct Harness {
    pub admin: Admin,
    pub published: Arc<Mutex<Vec<Resources>>>,
    pub dir: TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(settings(), ProxyMode::Stream)
    }

    pub fn with(settings: AdminSettings, mode: ProxyMode) -> Harness {
        let dir = TempDir::new("handler");
        let store = FileStore::open(dir.path()).unwrap();
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&published);
        let mut admin =
            Admin::new(settings, mode, store, Box::new(move |r: &Resources| sink.lock().unwrap().push(r.clone())));
        admin.clock = || NOW;
        Harness { admin, published, dir }
    }

    /// Sends a request with the admin key from 127.0.0.1.
    pub fn call(&mut self, method: &str, url: &str, body: &str) -> (u16, Value) {
        self.call_with(method, url, &[("X-API-KEY", ADMIN_KEY)], "127.0.0.1", body)
    }

    pub fn call_with(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        peer: &str,
        body: &str,
    ) -> (u16, Value) {
        let response = self.raw(method, url, headers, peer, body.as_bytes());
        let json = serde_json::from_str(&response.body).unwrap_or(Value::Null);
        (response.status, json)
    }

    pub fn raw(&mut self, method: &str, url: &str, headers: &[(&str, &str)], peer: &str, body: &[u8]) -> Response {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let peer: IpAddr = peer.parse().unwrap();
        self.admin.handle(&Request { method, path, query, headers: &headers, peer, body })
    }

    /// Closes the handler's store and opens the folder again, as a restart would.
    pub fn reopen(self) -> (TempDir, FileStore) {
        let Harness { admin, dir, .. } = self;
        drop(admin);
        let store = FileStore::open(dir.path()).unwrap();
        (dir, store)
    }

    pub fn publications(&self) -> usize {
        self.published.lock().unwrap().len()
    }
}
