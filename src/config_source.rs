//! Where this node's stream routes, upstreams, services and ssls come from
//! (`deployment.role` + `config_provider`), and the Admin API that goes with
//! each source:
//!
//! | source | first objects | later changes | Admin API |
//! |---|---|---|---|
//! | embedded (default) | `strait.data_dir` | published by the admin thread after each write | reads and writes the file store |
//! | etcd, traditional | a full range, `startup_retry` attempts | the `strait-etcd` thread's watch | reads and writes etcd; a write answers once this node applied it |
//! | etcd, data_plane | the same | the same | reads etcd; writes refused |
//! | yaml (standalone) | `conf/apisix.yaml` beside config.yaml | re-read when it changes | reads the file's objects; writes refused |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use strait_admin::etcd::tls::ClientConfig;
use strait_admin::{etcd, standalone, AdminHandle, AdminOptions, FileStore, Publish};
use strait_engine::config::{ConfigProvider, Role, StraitConfig};
use strait_engine::Resources;

/// Hands a new object set to the workers (builds and publishes a snapshot).
pub type PublishFn = Box<dyn FnMut(&Resources) + Send + 'static>;

/// Longest an admin write waits for this node to apply it (read-your-writes).
const APPLY_WAIT_MAX: Duration = Duration::from_secs(2);

pub enum Source {
    Embedded(FileStore),
    Etcd { node: etcd::node::EtcdNode, first: Resources, tls: Option<Arc<ClientConfig>> },
    Standalone { path: PathBuf, objects: standalone::FileObjects },
}

impl Source {
    /// Opens the source and reads the first object set; an error stops the start.
    /// `system_roots_pem` (the system CA bundle) is trusted by `https://` etcd hosts.
    pub fn open(
        config_path: &Path,
        config: &StraitConfig,
        seed: u64,
        system_roots_pem: Option<&str>,
    ) -> Result<Source, String> {
        match &config.deployment.provider {
            ConfigProvider::Embedded => {
                let data_dir = crate::resolve_beside(config_path, &config.data_dir);
                Ok(Source::Embedded(FileStore::open(&data_dir).map_err(|e| e.to_string())?))
            }
            ConfigProvider::Etcd(settings) => {
                let base_dir = config_path.parent().unwrap_or(Path::new("."));
                let tls = etcd::tls::client_config(settings, base_dir, system_roots_pem)?;
                let mut node = etcd::node::EtcdNode::new(settings, seed, tls.clone());
                let first = node.load()?.resources;
                Ok(Source::Etcd { node, first, tls })
            }
            ConfigProvider::Yaml => {
                let path = crate::resolve_beside(config_path, "apisix.yaml");
                let objects = standalone::load(&path)?;
                log::info!("standalone mode: serving {} ({} objects)", path.display(), objects.len());
                Ok(Source::Standalone { path, objects: standalone::FileObjects::new(objects) })
            }
        }
    }

    /// The objects for the first snapshot.
    pub fn initial_resources(&self) -> Resources {
        match self {
            Source::Embedded(store) => store.resources(),
            Source::Etcd { first, .. } => first.clone(),
            Source::Standalone { objects, .. } => objects.resources(),
        }
    }

    /// Starts following the source and, when enabled, the Admin API.
    /// `file`, `etcd` or `yaml`: what the control API calls this source.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Embedded(_) => "file",
            Source::Etcd { .. } => "etcd",
            Source::Standalone { .. } => "yaml",
        }
    }

    pub fn start(
        self,
        config: &StraitConfig,
        publish: PublishFn,
        status: Arc<strait_admin::SourceStatus>,
    ) -> Result<Option<AdminHandle>, String> {
        let data_plane = config.deployment.role == Role::DataPlane;
        let options = |read_only: Option<String>| AdminOptions {
            settings: config.admin.clone(),
            proxy_mode: config.proxy_mode,
            read_only,
        };
        let admin_error = |e: std::io::Error| format!("admin API on {}: {e}", config.admin.listen);
        match self {
            Source::Embedded(store) => {
                if !config.admin.enabled {
                    return Ok(None);
                }
                strait_admin::spawn(options(None), store, Publish::Direct(publish)).map(Some).map_err(admin_error)
            }
            Source::Etcd { node, tls, .. } => {
                let ConfigProvider::Etcd(settings) = &config.deployment.provider else {
                    unreachable!("an etcd source comes from an etcd provider")
                };
                let applied = Arc::new(strait_admin::AppliedRevision::new(node.applied_revision()));
                let mut publish = publish;
                node.spawn(
                    Box::new(move |p: etcd::sync::Publication| publish(&p.resources)),
                    Arc::clone(&applied),
                    status,
                )
                .map_err(|e| format!("cannot start the etcd thread: {e}"))?;
                if !config.admin.enabled {
                    return Ok(None);
                }
                let read_only = data_plane.then(|| {
                    "this node is a data plane (deployment.role: data_plane): it serves the configuration \
                     from etcd and refuses writes; write through a traditional node's Admin API"
                        .to_string()
                });
                let store = etcd::EtcdStore::new(settings, tls);
                let publish = Publish::AwaitApplied { applied, limit: APPLY_WAIT_MAX.min(settings.timeout) };
                strait_admin::spawn(options(read_only), store, publish).map(Some).map_err(admin_error)
            }
            Source::Standalone { path, objects } => {
                let read_only = format!(
                    "this node runs in standalone mode (deployment.role: data_plane, config_provider: yaml): \
                     the configuration is read from {}, edit that file instead; the Admin API is read-only",
                    path.display()
                );
                standalone::spawn_watcher(path, objects.clone(), publish)
                    .map_err(|e| format!("cannot start the standalone file watcher: {e}"))?;
                if !config.admin.enabled {
                    return Ok(None);
                }
                strait_admin::spawn(options(Some(read_only)), objects, Publish::Direct(Box::new(|_| {})))
                    .map(Some)
                    .map_err(admin_error)
            }
        }
    }
}
