//! Consistent hashing, bit-compatible with APISIX (lua-resty-balancer 0.05,
//! spec §4.3.5), so a key lands on the same node after moving from APISIX.
//!
//! Ring: weights divided by their gcd; each node contributes 160 points per
//! unit of weight; the node id is `host:port` with every `:` replaced by a NUL
//! byte; point 1 = crc32(id ‖ 0u32 LE), point k = crc32(id ‖ point(k−1) LE).
//! Lookup: the first point ≥ crc32(key), wrapping to the smallest.

use std::net::SocketAddr;

const POINTS_PER_WEIGHT: u32 = 160;

#[derive(Clone, Debug)]
pub struct HashRing {
    /// (hash, node index), sorted by hash.
    points: Vec<(u32, u32)>,
}

impl HashRing {
    /// `ids[i]` is node i's `host:port` as written; `weights[i]` its weight.
    pub fn new(ids: &[String], weights: &[u32]) -> HashRing {
        let gcd = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        let mut points = Vec::new();
        for (index, (id, weight)) in ids.iter().zip(weights).enumerate() {
            if *weight == 0 {
                continue;
            }
            let id: Vec<u8> = id.bytes().map(|b| if b == b':' { 0 } else { b }).collect();
            let mut previous = 0u32;
            for _ in 0..POINTS_PER_WEIGHT * (weight / gcd) {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&id);
                hasher.update(&previous.to_le_bytes());
                previous = hasher.finalize();
                points.push((previous, index as u32));
            }
        }
        // Stable: equal hashes keep node order, so the ring is the same every build.
        points.sort_by_key(|&(hash, _)| hash);
        HashRing { points }
    }

    /// The node for `key`, walking clockwise past nodes `skip` rejects
    /// (tried or unhealthy). `None` when every node is rejected.
    pub fn find(&self, key: &[u8], skip: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let hash = crc32fast::hash(key);
        let start = self.points.partition_point(|&(h, _)| h < hash) % self.points.len();
        (0..self.points.len())
            .map(|step| self.points[(start + step) % self.points.len()].1 as usize)
            .find(|&node| !skip(node))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The connection facts a chash key can be built from (stream variables).
#[derive(Clone, Copy, Debug)]
pub struct KeySource {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl KeySource {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "remote_addr" => Some(self.peer.ip().to_string()),
            "remote_port" => Some(self.peer.port().to_string()),
            "server_addr" => Some(self.local.ip().to_string()),
            "server_port" => Some(self.local.port().to_string()),
            _ => None,
        }
    }

    /// The hash key per `hash_on` and `key`; a key that resolves to nothing
    /// falls back to `remote_addr`, as APISIX does (with a log line there).
    pub fn key(&self, hash_on: Option<&str>, key: Option<&str>) -> String {
        let resolved = match (hash_on.unwrap_or("vars"), key) {
            ("vars", Some(name)) => self.var(name),
            ("vars_combinations", Some(template)) => self.expand(template),
            _ => None,
        };
        resolved.unwrap_or_else(|| self.peer.ip().to_string())
    }

    /// `$remote_addr$server_port` and the like; `None` if no variable resolved.
    fn expand(&self, template: &str) -> Option<String> {
        let mut out = String::new();
        let mut resolved_any = false;
        let mut rest = template;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if let Some(value) = self.var(&after[..name_len]) {
                out.push_str(&value);
                resolved_any = true;
            }
            rest = &after[name_len..];
        }
        out.push_str(rest);
        resolved_any.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> HashRing {
        HashRing::new(&["0.0.0.0:1995".into(), "127.0.0.1:1995".into()], &[1, 1])
    }

    #[test]
    fn apisix_test_vectors() {
        let ring = ring();
        assert_eq!(ring.find(b"f", |_| false), Some(0), "f -> 0.0.0.0:1995");
        assert_eq!(ring.find(b"g", |_| false), Some(1), "g -> 127.0.0.1:1995");
        assert_eq!(ring.find(b"127.0.0.1", |_| false), Some(1), "127.0.0.1 -> 127.0.0.1:1995");
    }

    #[test]
    fn points_follow_weights_over_gcd() {
        assert_eq!(HashRing::new(&["a:1".into(), "b:2".into()], &[2, 4]).points.len(), 160 * 3);
    }

    #[test]
    fn skipped_nodes_walk_clockwise_to_another() {
        let ring = ring();
        assert_eq!(ring.find(b"f", |n| n == 0), Some(1));
        assert_eq!(ring.find(b"f", |_| true), None);
    }

    #[test]
    fn keys_from_vars_and_templates() {
        let source = KeySource { local: "10.0.0.1:9100".parse().unwrap(), peer: "192.168.1.2:5555".parse().unwrap() };
        assert_eq!(source.key(None, Some("remote_port")), "5555");
        assert_eq!(source.key(Some("vars_combinations"), Some("$remote_addr$server_port")), "192.168.1.29100");
        assert_eq!(source.key(Some("vars_combinations"), Some("$nothing")), "192.168.1.2", "unresolved falls back");
        assert_eq!(source.key(Some("header"), Some("x")), "192.168.1.2");
    }
}
