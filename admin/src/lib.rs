//! # strait-admin: Strait's Admin API and config store
//!
//! This crate **owns** the Admin API (APISIX v3 compatible, spec §2) for
//! `stream_routes`, `upstreams`, `services` and `ssls`; the durable embedded
//! store those objects live in ([`FileStore`]); and the first-start admin key
//! generation ([`ensure_admin_key`]).
//!
//! It **must not** decide what a valid object is: every object is checked by
//! `strait_engine::model`, the one definition shared with the YAML loader and
//! the fuzzers. It never touches the data plane directly either: after each
//! acknowledged write it hands the complete new set of objects to the
//! [`OnChange`] callback, and the binary turns that into a snapshot for the
//! workers. It may read the system clock (for `create_time`/`update_time`);
//! the engine may not.
//!
//! ## Call order
//! 1. [`ensure_admin_key`] on the parsed config.yaml (before anything logs
//!    or serves with an empty key).
//! 2. [`FileStore::open`] on the data folder; [`FileStore::resources`] gives
//!    the objects for the first snapshot.
//! 3. [`spawn`] binds `deployment.admin.admin_listen` and serves on its own
//!    thread; [`AdminHandle::stop`] ends it.
//!
//! ## Guarantees
//! - A write is acknowledged only after it is on disk (temp file, fsync,
//!   rename, fsync of the folder) and after `on_change` returned; a refused or
//!   failed write changes nothing.
//! - Requests are handled one at a time on the admin thread, which is the
//!   store's only writer: no locks, no lost updates. Bodies are read first on
//!   short-lived threads (at most 32), so a stalled client holds up only itself.
//! - The store folder is locked (flock): a second process cannot open it.
//! - Bounded: request bodies up to 1.5 MiB, at most 100,000 objects per type.

mod admin_key;
mod applied;
mod auth;
mod config_store;
pub mod control;
mod dispatch;
mod envelope;
pub mod etcd;
mod kind;
mod list;
mod patch;
mod request;
mod resources;
mod server;
pub mod source_status;
pub mod standalone;
mod store;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use admin_key::ensure_admin_key;
pub use applied::AppliedRevision;
pub use config_store::{Cond, ConfigStore, PutOutcome};
pub use dispatch::Publish;
pub use server::AdminHandle;
pub use source_status::SourceStatus;
pub use store::{Entry, FileStore, StoreError};

/// What the Admin API needs from config.yaml.
pub struct AdminOptions {
    pub settings: strait_engine::config::AdminSettings,
    pub proxy_mode: strait_engine::config::ProxyMode,
    /// `Some(reason)` on nodes that must not write (data_plane, standalone):
    /// every write is refused with 403 and this text.
    pub read_only: Option<String>,
}

/// Called on the admin thread after every acknowledged (durable) write, with
/// the complete new set of objects.
pub type OnChange = Box<dyn FnMut(&strait_engine::Resources) + Send + 'static>;

/// Binds `settings.listen` and serves the Admin API on its own thread
/// (tiny_http). Returns once listening.
pub fn spawn<S: ConfigStore + 'static>(
    options: AdminOptions,
    store: S,
    publish: Publish,
) -> std::io::Result<AdminHandle> {
    if !options.settings.key_required {
        log::warn!("Admin key is bypassed! deployment.admin.admin_key_required is false: anyone who can reach {} may change the configuration", options.settings.listen);
    }
    let listen = options.settings.listen;
    let mut admin = dispatch::Admin::with_publish(options.settings, options.proxy_mode, store, publish);
    if let Some(reason) = options.read_only {
        admin = admin.read_only(reason);
    }
    server::spawn(listen, admin)
}
