//! `conf/config.yaml`: the static settings read at start (listeners, admin API,
//! workers). Parsed from text: the binary reads the file, the engine only
//! interprets it. Keys the stream proxy does not use (APISIX's HTTP settings)
//! are ignored so that an APISIX config.yaml can be copied as it is.

mod access_log;
mod deployment;
mod listen;
mod tls;
mod yaml;

pub use access_log::{parse_format, AccessLogSettings, LogPiece, LogVar, DEFAULT_FORMAT};
pub use deployment::{ConfigProvider, Deployment, EtcdEndpoint, EtcdSettings, EtcdTls, Role};

pub use listen::{parse_listen_list, ListenSpec, Protocol};
pub use tls::TlsSettings;
pub use yaml::{AdminKey, AdminRole, AdminSettings, ConfigError, ProxyMode, StraitConfig, WorkerProcesses};
