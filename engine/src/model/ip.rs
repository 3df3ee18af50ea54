//! IP and CIDR matchers for `remote_addr` and `server_addr`.

use ipnet::IpNet;
use std::net::IpAddr;

/// A single address or a CIDR block, IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpMatch {
    net: IpNet,
}

impl IpMatch {
    /// Parses `1.2.3.4`, `1.2.3.0/24`, `::1`, `2001:db8::/32`. A bare address is
    /// a /32 or /128. Masks beyond 32 (v4) or 128 (v6) are rejected.
    pub fn parse(text: &str) -> Option<IpMatch> {
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Some(IpMatch { net: IpNet::from(addr) });
        }
        let (addr, mask) = text.split_once('/')?;
        if mask.is_empty() || mask.len() > 3 || !mask.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u8 = mask.parse().ok()?;
        // trunc(): `10.1.2.3/8` means the 10/8 block, as nginx and APISIX treat it.
        IpNet::new(addr, prefix).ok().map(|net| IpMatch { net: net.trunc() })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client arriving on a dual-stack socket shows as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.net.contains(&addr)
    }

    pub fn network(&self) -> IpAddr {
        self.net.network()
    }

    pub fn prefix_len(&self) -> u8 {
        self.net.prefix_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_addresses_and_cidrs_match_as_written() {
        let m = IpMatch::parse("127.0.0.1").unwrap();
        assert!(m.contains("127.0.0.1".parse().unwrap()));
        assert!(!m.contains("127.0.0.2".parse().unwrap()));
        let m = IpMatch::parse("10.0.0.0/8").unwrap();
        assert!(m.contains("10.9.8.7".parse().unwrap()));
        assert!(!m.contains("11.0.0.1".parse().unwrap()));
        let m = IpMatch::parse("2001:db8::/32").unwrap();
        assert!(m.contains("2001:db8::5".parse().unwrap()));
        assert!(!m.contains("2001:db9::5".parse().unwrap()));
        assert!(IpMatch::parse("::/0").unwrap().contains("::1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_clients_match_ipv4_rules() {
        let m = IpMatch::parse("127.0.0.0/8").unwrap();
        assert!(m.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_masks_and_addresses_are_rejected() {
        for bad in [":/8", "1.2.3.4/33", "::1/129", "1.2.3/8", "1.2.3.4/", "abc", "1.2.3.4/-1", ""] {
            assert!(IpMatch::parse(bad).is_none(), "{bad} must be rejected");
        }
    }
}
