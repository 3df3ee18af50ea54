//! The `strait` binary: reads config.yaml, opens the config store, starts the
//! workers and the Admin API, and waits for a signal. Glue only: every piece
//! lives in a crate (engine, io, admin).

mod cli;
mod config_source;
mod snapshots;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use strait_engine::config::{ListenSpec, StraitConfig, WorkerProcesses};
use strait_engine::{EngineConfig, Resources, SharedState, Snapshot};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("strait: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        cli::Command::Version => {
            println!("strait {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Test { config } => match load_config(&config) {
            Ok(loaded) => {
                for ignored in &loaded.ignored {
                    eprintln!("strait: warning: {}: {ignored}", config.display());
                }
                println!("strait: the configuration file {} syntax is ok", config.display());
                println!("strait: configuration file {} test is successful", config.display());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("strait: {message}");
                eprintln!("strait: configuration file {} test failed", config.display());
                ExitCode::FAILURE
            }
        },
        cli::Command::Run { config } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            match run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("strait: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load_config(path: &Path) -> Result<StraitConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    StraitConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(config_path: &Path) -> Result<(), String> {
    let mut config = load_config(config_path)?;
    for ignored in &config.ignored {
        log::warn!("{}: {ignored}", config_path.display());
    }
    strait_admin::ensure_admin_key(config_path, &mut config);

    // The system's CA bundle, read once here (the engine reads no files): trusted by
    // upstreams with `tls.verify: true` and no `tls.ca_certs`, and by https:// etcd hosts.
    let system_roots = system_roots_pem();
    let source = config_source::Source::open(config_path, &config, process_seed(), system_roots.as_deref())?;
    // Node health and least_conn counts outlive every snapshot and are seen by every worker.
    let mut shared = SharedState::default();
    shared.tls.system_roots_pem = system_roots;
    let snapshots = Arc::new(snapshots::Snapshots::new(shared));
    // The first snapshot goes to the workers when they start.
    let snapshot = snapshots.apply(&source.initial_resources(), &|_| {});

    let listeners: Vec<ListenSpec> = if config.proxy_mode.stream_enabled() {
        config.tcp.iter().chain(config.udp.iter()).cloned().collect()
    } else {
        if !config.tcp.is_empty() || !config.udp.is_empty() {
            log::warn!("apisix.proxy_mode is http: the stream_proxy listeners are not started");
        }
        Vec::new()
    };
    let workers_count = match config.worker_processes {
        WorkerProcesses::Count(n) => n,
        WorkerProcesses::Auto => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let engine = EngineConfig {
        seed: process_seed(),
        buffer_bytes: config.buffer_size,
        max_connections: config.worker_connections,
        udp_idle_timeout: config.udp_idle_timeout,
        udp_sessions_max: config.udp_sessions_max,
        udp_proxy_responses: config.udp_proxy_responses,
        driver_can_splice: config.splice,
        tls_handshake_timeout: config.tls.handshake_timeout,
        fallback_sni: config.tls.fallback_sni.clone(),
        session_records: config.access_log.is_some(),
        ..EngineConfig::default()
    };
    log::info!("engine seed {} (worker i uses seed + i)", engine.seed);
    // Two descriptors per TCP connection, one per UDP session, per worker.
    let needed = (2 * config.worker_connections + config.udp_sessions_max) as u64 * workers_count as u64;
    match strait_io::raise_open_file_limit() {
        Ok(limit) if limit < needed => log::warn!(
            "open-file limit {limit} is below what {workers_count} worker(s) x worker_connections {} may need \
             ({needed}); raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower nginx_config.event.worker_connections",
            config.worker_connections
        ),
        Ok(limit) => log::debug!("open-file limit {limit}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let workers = strait_io::Workers::start(
        strait_io::WorkersConfig {
            workers: workers_count,
            listeners: listeners.clone(),
            engine,
            loopback_tcp_congestion: config.loopback_tcp_congestion.clone(),
            access_log: config
                .access_log
                .as_ref()
                .map(|log| (resolve_beside(config_path, &log.path), log.format.clone())),
        },
        snapshot.clone(),
    )
    .map_err(|e| e.to_string())?;
    for spec in &listeners {
        log::info!("listening on {} ({:?}{})", spec.addr, spec.protocol, if spec.tls { ", tls" } else { "" });
    }
    log::info!("{workers_count} worker(s) started");

    let latest: strait_admin::control::LatestSnapshot = Arc::new(std::sync::Mutex::new(snapshot.clone()));
    // The control API is read-only and auxiliary: a port clash is logged, it does not stop the proxy.
    let source_status = Arc::new(strait_admin::SourceStatus::new(source.name()));
    let control = config.control_listen.and_then(|listen| {
        strait_admin::control::spawn_control(listen, latest.clone(), source_status.clone())
            .map_err(|e| log::error!("{e}; the control API is off (set apisix.control.port or apisix.enable_control)"))
            .ok()
    });

    let publisher = workers.publisher();
    let sink: snapshots::Sink = Arc::new(move |snapshot: Arc<Snapshot>| {
        *latest.lock().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
        publisher.publish(snapshot);
    });
    snapshots::spawn_refresher(snapshots.clone(), config.dns_resolver_valid, sink.clone())
        .map_err(|e| format!("cannot start the DNS refresh thread: {e}"))?;
    let publish: config_source::PublishFn = Box::new(move |resources: &Resources| {
        snapshots.apply(resources, &*sink);
    });
    let admin = source.start(&config, publish, source_status)?;

    // SIGUSR1 reopens the access log after rotation (nginx's USR1); SIGTERM/SIGINT stop.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            log::info!("signal {signal}: reopening the access log");
            workers.reopen_logs();
            continue;
        }
        log::info!("signal {signal}: stop accepting, draining for up to {:?}", config.worker_shutdown_timeout);
        break;
    }
    if let Some(admin) = admin {
        admin.stop();
    }
    if let Some(control) = control {
        control.stop();
    }
    workers.shutdown(config.worker_shutdown_timeout);
    log::info!("exit");
    Ok(())
}

/// The system's CA bundle (Debian's path first), for `tls.verify: true`.
fn system_roots_pem() -> Option<Arc<str>> {
    const BUNDLES: [&str; 3] =
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    BUNDLES.iter().find_map(|path| std::fs::read_to_string(path).ok()).map(Arc::from)
}

/// A relative `strait.data_dir` is taken relative to the config file's folder.
pub(crate) fn resolve_beside(config_path: &Path, dir: &str) -> PathBuf {
    let dir = Path::new(dir);
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    config_path.parent().unwrap_or(Path::new(".")).join(dir)
}

/// The engine's seed: fresh per process, logged so a run's decisions can be replayed.
fn process_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::process::id() as u64,
    }
}
