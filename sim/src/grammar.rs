//! The weighted grammar of things that can happen in one step, and swarm
//! testing: every seed first draws its own weights and fault rates, so some
//! runs are all resets, some never reset, some have only slow readers. A
//! uniform mix would make every run alike and rare interleavings rarer still.

use crate::models::ConfigShape;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Accept,
    ClientSends,
    UpstreamSends,
    ClientFin,
    UpstreamFin,
    ClientReset,
    UpstreamDies,
    SlowReaderReads,
    ToggleReader,
    NodeChanges,
    ConfigChanges,
    Idle,
    Tick,
    /// A UDP client sends a datagram (a new flow opens a session).
    UdpClientSends,
    /// A UDP upstream sends a datagram nobody asked for on a live session.
    UdpUpstreamSends,
}

pub const STEPS: [Step; 15] = [
    Step::Accept,
    Step::ClientSends,
    Step::UpstreamSends,
    Step::ClientFin,
    Step::UpstreamFin,
    Step::ClientReset,
    Step::UpstreamDies,
    Step::SlowReaderReads,
    Step::ToggleReader,
    Step::NodeChanges,
    Step::ConfigChanges,
    Step::Idle,
    Step::Tick,
    Step::UdpClientSends,
    Step::UdpUpstreamSends,
];

/// Everything a seed decides before its first step.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Weight of each entry of `STEPS`.
    pub weights: [u32; STEPS.len()],
    /// Engine buffer per direction (buggify: sometimes a handful of bytes).
    pub buffer_bytes: usize,
    pub max_connections: usize,
    /// Largest single read or write the driver does (buggify: 1).
    pub io_max: usize,
    /// Largest chunk a peer sends in one go.
    pub send_max: u64,
    /// Socket send buffer room towards a peer.
    pub window_bytes: usize,
    /// Chance a new peer is a slow reader.
    pub slow_reader_rate: f64,
    /// Chances a node is refusing / a black hole / unreachable when (re)drawn.
    pub refuse_rate: f64,
    pub blackhole_rate: f64,
    pub unreachable_rate: f64,
    /// Connect latency ceiling, in microseconds.
    pub latency_max_us: u64,
    pub config: ConfigShape,
    /// UDP sessions the engine may hold (sometimes a handful, to hit the limit).
    pub udp_sessions_max: usize,
    /// Idle timeout of a UDP session whose upstream sets no `timeout`.
    pub udp_idle_timeout_s: u64,
    /// The engine-wide `proxy_responses` (0 = unlimited).
    pub udp_proxy_responses: u32,
    /// Replies an upstream node sends per datagram, at most.
    pub udp_replies_max: u64,
    /// Distinct UDP client addresses (few: flows come back to their session).
    pub udp_clients: u64,
    /// Whether this engine runs the active health probes.
    pub run_active_checks: bool,
}

impl Swarm {
    pub fn draw(rng: &mut Rng) -> Swarm {
        let mut weights = [0u32; STEPS.len()];
        for (step, w) in STEPS.iter().zip(weights.iter_mut()) {
            let base = match step {
                Step::Accept => 12,
                Step::ClientSends | Step::UpstreamSends => 20,
                Step::ClientFin | Step::UpstreamFin => 4,
                Step::ClientReset | Step::UpstreamDies => 2,
                Step::SlowReaderReads => 10,
                Step::ToggleReader => 2,
                Step::NodeChanges => 2,
                Step::ConfigChanges => 2,
                Step::Idle => 1,
                Step::Tick => 8,
                Step::UdpClientSends => 10,
                Step::UdpUpstreamSends => 2,
            };
            // Swarm: each kind of step is switched off in about a fifth of the
            // seeds and otherwise scaled 0.5x..2x.
            *w = if rng.chance(0.2) && *step != Step::Accept { 0 } else { (base * rng.range(1, 4) as u32).div_ceil(2) };
        }
        let buffer_bytes =
            if rng.chance(0.15) { rng.range(1, 8) as usize } else { *rng.pick(&[64, 512, 4096, 16 * 1024]) };
        let io_max = if rng.chance(0.15) { 1 } else { rng.skewed(8192) as usize };
        let window_bytes = if rng.chance(0.2) { rng.range(1, 16) as usize } else { rng.skewed(64 * 1024) as usize };
        Swarm {
            weights,
            buffer_bytes,
            max_connections: if rng.chance(0.1) { rng.range(1, 4) as usize } else { 10_000 },
            io_max,
            send_max: rng.skewed(16 * 1024),
            window_bytes,
            slow_reader_rate: *rng.pick(&[0.0, 0.1, 0.5, 0.9]),
            refuse_rate: *rng.pick(&[0.0, 0.05, 0.3]),
            blackhole_rate: *rng.pick(&[0.0, 0.05, 0.2]),
            unreachable_rate: *rng.pick(&[0.0, 0.05]),
            latency_max_us: *rng.pick(&[0, 100, 10_000, 200_000]),
            config: ConfigShape {
                filter_rate: *rng.pick(&[0.0, 0.2, 0.5]),
                priority_rate: *rng.pick(&[0.0, 0.3]),
                invalid_rate: *rng.pick(&[0.0, 0.05]),
                idle_max_s: rng.range(1, 60),
                connect_max_ms: rng.range(100, 5000),
                checks_rate: *rng.pick(&[0.0, 0.3, 0.8]),
                other_balancer_rate: *rng.pick(&[0.0, 0.3, 0.6]),
                proxy_responses_rate: *rng.pick(&[0.0, 0.2]),
            },
            udp_sessions_max: if rng.chance(0.2) { rng.range(1, 4) as usize } else { 16_384 },
            udp_idle_timeout_s: rng.range(1, 30),
            udp_proxy_responses: *rng.pick(&[0, 0, 1, 2]),
            udp_replies_max: rng.range(0, 3),
            udp_clients: rng.range(1, 12),
            run_active_checks: rng.chance(0.9),
        }
    }

    pub fn next_step(&self, rng: &mut Rng) -> Step {
        STEPS[rng.weighted(&self.weights)]
    }
}
