//! Starting the worker threads, publishing config snapshots to them, and
//! shutting them down.

use crate::access_log::AccessLog;
use crate::congestion::LoopbackCongestion;
use crate::listeners::{bind_all, BindError};
use crate::worker::{Control, Worker};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use strait_engine::config::{ListenSpec, LogPiece};
use strait_engine::{Engine, EngineConfig, Snapshot};

pub struct WorkersConfig {
    pub workers: usize,
    /// Every stream listener (TCP then UDP), in the engine's `ListenerId` order.
    pub listeners: Vec<ListenSpec>,
    pub engine: EngineConfig,
    /// `strait.loopback_tcp_congestion`; `None` keeps the system's.
    pub loopback_tcp_congestion: Option<String>,
    /// The stream access log (file and format); `None` = off. The engine must
    /// collect session records (`EngineConfig::session_records`) for it.
    pub access_log: Option<(PathBuf, Vec<LogPiece>)>,
}

/// Sends new snapshots to every worker. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct SnapshotPublisher {
    workers: Vec<(Sender<Control>, Arc<mio::Waker>)>,
}

impl SnapshotPublisher {
    /// Hands `snapshot` to every worker; each applies it at its next wake-up,
    /// which this call triggers.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.tell_every_worker(|| Control::Snapshot(snapshot.clone()));
    }

    /// Sends each worker the message `make` builds and wakes it to read it.
    fn tell_every_worker(&self, make: impl Fn() -> Control) {
        for (sender, waker) in &self.workers {
            if sender.send(make()).is_ok() {
                let _ = waker.wake();
            }
        }
    }
}

pub struct Workers {
    publisher: SnapshotPublisher,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Binds every listener once per worker (so bind errors surface here, before
    /// any thread starts) and starts the workers.
    pub fn start(config: WorkersConfig, snapshot: Arc<Snapshot>) -> Result<Workers, StartError> {
        let mut prepared = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let listeners = bind_all(&config.listeners).map_err(StartError::Bind)?;
            prepared.push(listeners);
        }
        let mut publisher = SnapshotPublisher { workers: Vec::new() };
        let mut threads = Vec::new();
        for (index, listeners) in prepared.into_iter().enumerate() {
            let poll = mio::Poll::new().map_err(StartError::Io)?;
            let waker =
                Arc::new(mio::Waker::new(poll.registry(), crate::conn_io::WAKER_TOKEN).map_err(StartError::Io)?);
            let (sender, receiver) = mpsc::channel();
            let mut engine_config = config.engine.clone();
            // Each worker draws from its own stream of the process seed.
            engine_config.seed = config.engine.seed.wrapping_add(index as u64);
            // Health is shared by all workers; probing it once per process is enough.
            engine_config.run_active_checks = config.engine.run_active_checks && index == 0;
            let engine = Engine::new(config.listeners.clone(), snapshot.clone(), engine_config);
            let name = format!("worker {index}");
            let congestion = LoopbackCongestion::new(config.loopback_tcp_congestion.as_deref());
            let access_log = match &config.access_log {
                Some((path, format)) => Some(AccessLog::open(path, format.clone()).map_err(|error| {
                    StartError::AccessLog(format!("cannot open the access log {}: {error}", path.display()))
                })?),
                None => None,
            };
            let worker = Worker::new(name.clone(), poll, engine, listeners, receiver, congestion, access_log)
                .map_err(StartError::Io)?;
            let thread = std::thread::Builder::new()
                .name(format!("strait-{index}"))
                .spawn(move || worker.run())
                .map_err(StartError::Io)?;
            publisher.workers.push((sender, waker));
            threads.push(thread);
        }
        Ok(Workers { publisher, threads })
    }

    pub fn publisher(&self) -> SnapshotPublisher {
        self.publisher.clone()
    }

    /// After log rotation (SIGUSR1): every worker reopens the access log at its path.
    pub fn reopen_logs(&self) {
        self.publisher.tell_every_worker(|| Control::ReopenLogs);
    }

    /// Stops accepting everywhere and waits until every worker has drained its
    /// connections or `drain` has passed.
    pub fn shutdown(self, drain: Duration) {
        self.publisher.tell_every_worker(|| Control::Shutdown { drain });
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
pub enum StartError {
    Bind(BindError),
    Io(std::io::Error),
    AccessLog(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(e) => e.fmt(f),
            StartError::Io(e) => write!(f, "failed to start a worker: {e}"),
            StartError::AccessLog(message) => write!(f, "nginx_config.stream.access_log: {message}"),
        }
    }
}
