//! Which network a client address belongs to, for per-address rate limits.
//!
//! An IPv4 address is what one subscriber (or one NAT) gets, so IPv4 is limited per address. An
//! IPv6 subscriber gets at least a /64 (RFC 6177; most providers hand out a /56 or a /48), and
//! picks any of its 2^64 interface ids at will, so limiting IPv6 per address gives one holder 2^64
//! budgets. IPv6 is therefore limited per /64: the smallest block one subscriber controls.
//!
//! [`client_network`] is the one place that decides this; every per-address limiter key is built
//! from its answer. It accepts what a proxy header can carry (`CF-Connecting-IP`): IPv4 dotted
//! quads, IPv6 in any textual form (compressed, uppercase, with an embedded IPv4 tail), an IPv6
//! zone id (`fe80::1%eth0`, dropped), and `[…]` brackets. An IPv4 address mapped into IPv6
//! (`::ffff:192.0.2.1`) is that IPv4 address, so it shares its budget with the plain form.
//! Anything else is [`ClientNetwork::Unknown`], one shared bucket: garbage never buys a fresh
//! budget per spelling.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The block of addresses one client controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNetwork {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 /64: the address with its interface id (low 64 bits) zeroed.
    V6Prefix64(Ipv6Addr),
    /// Not an address (missing or malformed header): every such client shares one budget.
    Unknown,
}

impl ClientNetwork {
    /// The stable text form used in limiter keys: `192.0.2.1`, `2001:db8:1:2::/64`, `unknown`.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(address) => write!(f, "{address}"),
            Self::V6Prefix64(prefix) => write!(f, "{prefix}/64"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// The network of a client address as a proxy reports it (see the module docs).
pub fn client_network(address: &str) -> ClientNetwork {
    let text = address.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    // A zone id names an interface on the receiving host; it is not part of the address.
    let text = match text.split_once('%') {
        Some((address, zone)) if text.contains(':') && !zone.is_empty() => address,
        _ => text,
    };
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => ClientNetwork::V4(v4),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => ClientNetwork::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                ClientNetwork::V6Prefix64(Ipv6Addr::from(prefix))
            }
        },
        Err(_) => ClientNetwork::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: &str) -> String {
        client_network(address).key()
    }

    #[test]
    fn ipv4_is_limited_per_address() {
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_eq!(key(" 203.0.113.9\n"), "203.0.113.9");
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"));
        assert_eq!(key("0.0.0.0"), "0.0.0.0");
        assert_eq!(key("255.255.255.255"), "255.255.255.255");
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let full = key("2001:0db8:0001:0002:0003:0004:0005:0006");
        assert_eq!(full, "2001:db8:1:2::/64");
        // Every interface id of the same /64, in any spelling, is the same client.
        for same in [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:DB8:1:2::ABCD",
            "2001:db8:1:2:0:0:0:0",
            "2001:db8:1:2::",
            "[2001:db8:1:2::7]",
            "2001:db8:1:2::1.2.3.4",
        ] {
            assert_eq!(key(same), full, "{same}");
        }
        // The neighbouring /64 is another client.
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(key("::1"), "::/64");
        assert_eq!(key("::"), "::/64");
    }

    #[test]
    fn zone_ids_are_dropped() {
        assert_eq!(key("fe80::1%eth0"), "fe80::/64");
        assert_eq!(key("fe80::1%25eth0"), "fe80::/64");
        assert_eq!(key("[fe80::abcd%3]"), "fe80::/64");
        // A zone id needs an IPv6 address, and a name.
        assert_eq!(key("192.0.2.1%eth0"), "unknown");
        assert_eq!(key("fe80::1%"), "unknown");
    }

    #[test]
    fn mapped_ipv4_is_the_ipv4_address() {
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("::FFFF:c000:0201"), "192.0.2.1");
        assert_eq!(key("[::ffff:192.0.2.1]"), "192.0.2.1");
        assert_eq!(
            client_network("::ffff:192.0.2.1"),
            client_network("192.0.2.1")
        );
        // Neighbours stay apart, as plain IPv4 addresses do.
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
    }

    #[test]
    fn garbage_shares_one_bucket() {
        for garbage in [
            "",
            "   ",
            "unknown",
            "not an address",
            "203.0.113",
            "203.0.113.256",
            "203.0.113.09",
            "203.0.113.9:443",
            "[203.0.113.9]:443",
            "2001:db8::1::2",
            "2001:db8:1:2:3:4:5:6:7",
            "12345::",
            "[2001:db8::1",
            "2001:db8::1]",
            "::ffff:999.0.0.1",
            "1.2.3.4\0",
            "ｆｅ80::1",
        ] {
            assert_eq!(
                client_network(garbage),
                ClientNetwork::Unknown,
                "{garbage:?}"
            );
        }
        assert_eq!(key("junk"), "unknown");
    }
}
