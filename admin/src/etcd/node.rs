//! The driver: runs a [`Syncer`] against etcd with blocking I/O on one
//! dedicated config thread, and hands each new object set to the caller's
//! publisher (which builds a snapshot for the workers), then records the
//! applied revision for the Admin API's read-your-writes wait.
//!
//! The thread is detached: it holds no state worth flushing, and a watch read
//! may block for up to `watch_timeout`, so the process exits without joining it.

use super::gateway::{self, header_revision, range_kvs};
use super::http::{Client, EtcdError};
use super::sync::{Action, Ended, Publication, Stream, Syncer};
use crate::applied::AppliedRevision;
use rustls::ClientConfig;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_engine::config::EtcdSettings;

/// Receives every new object set, on the config thread.
pub type Publisher = Box<dyn FnMut(Publication) + Send + 'static>;

/// A node's config source on etcd: created, loaded once at start, then run.
pub struct EtcdNode {
    settings: EtcdSettings,
    client: Client,
    syncer: Syncer,
    epoch: Instant,
}

impl EtcdNode {
    /// `tls`: from [`client_config`](super::tls::client_config), for `https://` hosts.
    pub fn new(settings: &EtcdSettings, seed: u64, tls: Option<Arc<ClientConfig>>) -> EtcdNode {
        EtcdNode {
            settings: settings.clone(),
            client: Client::new(settings, tls),
            syncer: Syncer::new(&settings.prefix, settings.resync_delay, seed),
            epoch: Instant::now(),
        }
    }

    /// Loads everything, trying `startup_retry` times (APISIX's behaviour:
    /// a node that cannot read its config at start does not start). Returns
    /// the first object set.
    pub fn load(&mut self) -> Result<Publication, String> {
        let hosts: Vec<String> = self.settings.hosts.iter().map(|h| h.to_string()).collect();
        let mut last_error = String::new();
        for attempt in 1..=self.settings.startup_retry {
            match self.syncer.poll_action(self.now()) {
                Action::Range { key, range_end } => match self.range(&key, &range_end) {
                    Ok(()) => break,
                    Err(e) => last_error = e.to_string(),
                },
                Action::WaitUntil(until) => std::thread::sleep(until.saturating_sub(self.now())),
                Action::Watch { .. } => unreachable!("a syncer watches only after a load"),
            }
            if attempt < self.settings.startup_retry {
                log::warn!("etcd ({}) attempt {attempt}: {last_error}; retrying", hosts.join(", "));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if !self.syncer.loaded() {
            return Err(format!(
                "cannot load the configuration from etcd ({}) after {} attempt(s) (deployment.etcd.startup_retry): {last_error}",
                hosts.join(", "),
                self.settings.startup_retry
            ));
        }
        log::info!(
            "loaded the configuration from etcd {} (prefix {}) at revision {}",
            self.client.endpoint(),
            self.settings.prefix,
            self.syncer.applied_revision()
        );
        Ok(self.syncer.poll_publish().unwrap_or_else(|| Publication {
            revision: self.syncer.applied_revision(),
            resources: strait_engine::Resources::default(),
        }))
    }

    /// The applied revision after [`load`](EtcdNode::load).
    pub fn applied_revision(&self) -> u64 {
        self.syncer.applied_revision()
    }

    /// Starts the config thread: watch, re-read, retry, forever.
    /// `status` is kept current for the control API after every step.
    pub fn spawn(
        mut self,
        mut publish: Publisher,
        applied: Arc<AppliedRevision>,
        status: Arc<crate::SourceStatus>,
    ) -> io::Result<()> {
        std::thread::Builder::new().name("strait-etcd".into()).spawn(move || loop {
            self.step(&mut publish, &applied);
            let health = self.syncer.health();
            let stale_since = health.stale_since.map(|since| self.epoch + since);
            status.update(health.connected, stale_since, health.last_error.clone(), self.syncer.applied_revision());
        })?;
        Ok(())
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn range(&mut self, key: &str, range_end: &str) -> Result<(), EtcdError> {
        let answer = self.client.call("/v3/kv/range", &gateway::range_request(key, Some(range_end)))?;
        self.syncer.handle_range(self.now(), header_revision(&answer), range_kvs(&answer));
        Ok(())
    }

    fn step(&mut self, publish: &mut Publisher, applied: &AppliedRevision) {
        let now = self.now();
        match self.syncer.poll_action(now) {
            Action::WaitUntil(until) => std::thread::sleep(until.saturating_sub(now)),
            Action::Range { key, range_end } => {
                if let Err(e) = self.range(&key, &range_end) {
                    self.syncer.handle_range_failed(self.now(), e.to_string());
                }
                self.publish(publish, applied);
            }
            Action::Watch { key, range_end, start_revision } => {
                let request = gateway::watch_request(&key, &range_end, start_revision);
                let mut stream = match self.client.watch(&request, self.settings.watch_timeout) {
                    Ok(stream) => stream,
                    Err(e) => {
                        self.syncer.handle_watch_failed(self.now(), e.to_string());
                        return;
                    }
                };
                log::debug!("watching etcd {} from revision {start_revision}", self.client.endpoint());
                loop {
                    match stream.next_line() {
                        Ok(Some(line)) if line.trim().is_empty() => {}
                        Ok(Some(line)) => {
                            let verdict = self.syncer.handle_watch(self.now(), gateway::parse_watch_line(&line));
                            // Publish once per burst: when nothing more is waiting.
                            if verdict == Stream::Close || !stream.has_buffered() {
                                self.publish(publish, applied);
                            }
                            if verdict == Stream::Close {
                                return;
                            }
                        }
                        Ok(None) => {
                            self.syncer.handle_watch_ended(self.now(), Ended::Broken("etcd ended the watch".into()));
                            return;
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            self.syncer.handle_watch_ended(self.now(), Ended::IdleTimeout);
                            return;
                        }
                        Err(e) => {
                            let reason = format!("etcd {}: watch broken: {e}", self.client.endpoint());
                            self.syncer.handle_watch_ended(self.now(), Ended::Broken(reason));
                            return;
                        }
                    }
                }
            }
        }
    }

    fn publish(&mut self, publish: &mut Publisher, applied: &AppliedRevision) {
        if let Some(publication) = self.syncer.poll_publish() {
            log::info!("config from etcd at revision {}", publication.revision);
            publish(publication);
        }
        applied.set(self.syncer.applied_revision());
    }
}
