//! What the webhook routes add to their providers' signatures: an optional allow-list of the
//! networks webhooks may come from, and a memory of recent Knot signatures that catches one
//! replayed over a different body.
//!
//! Knot's `Knot-Signature` signs the body's length, its content type, its `event` and its
//! `session_id`, not the rest of the body: a captured signature stays valid for any body of the
//! same length with the same event and session (see `linkflow_providers::signature`). Knot
//! delivers each webhook with the same body on every retry, so a signature seen again with a
//! *different* body is a replay or a forgery, and is refused (401 `signature_replayed`). The
//! memory is bounded ([`RECENT_SIGNATURES`], oldest forgotten first) and per process: a replay
//! after that many other webhooks, or sent to another node, is not caught. The allow-list is
//! what stops a captured signature from being usable at all.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Knot signatures remembered with the hash of the body they came with.
pub const RECENT_SIGNATURES: usize = 100_000;

/// The networks webhooks may come from (none configured: any).
#[derive(Debug, Clone, Default)]
pub struct SourceNetworks(Vec<IpNet>);

impl SourceNetworks {
    /// Parses a comma-separated list of networks (`10.0.0.0/8, 2001:db8::/32`) or addresses
    /// (`203.0.113.7`, one address).
    pub fn parse(list: &str) -> Result<SourceNetworks, String> {
        let mut networks = Vec::new();
        for item in list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let network = match item.parse::<IpNet>() {
                Ok(network) => network,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("`{item}` is not a network (10.0.0.0/8) or an address"))?,
            };
            networks.push(network);
        }
        if networks.is_empty() {
            return Err("the list names no network".into());
        }
        Ok(SourceNetworks(networks))
    }

    /// Whether `address` is in one of the networks (an IPv4 address mapped into IPv6 counts
    /// as itself).
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|network| network.contains(&address))
    }
}

/// Recent Knot signatures and the SHA-256 of the body each came with.
#[derive(Debug, Default)]
pub(crate) struct RecentSignatures {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    bodies: HashMap<String, [u8; 32]>,
    order: VecDeque<String>,
}

impl RecentSignatures {
    /// Records a verified signature with its body; `false` when the same signature came
    /// before with a different body (a replay over changed content).
    pub(crate) fn check(&self, signature: &str, body: &[u8]) -> bool {
        let hash: [u8; 32] = Sha256::digest(body).into();
        let mut recent = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(seen) = recent.bodies.get(signature) {
            return *seen == hash;
        }
        if recent.order.len() >= RECENT_SIGNATURES {
            if let Some(oldest) = recent.order.pop_front() {
                recent.bodies.remove(&oldest);
            }
        }
        recent.bodies.insert(signature.to_owned(), hash);
        recent.order.push_back(signature.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let networks = SourceNetworks::parse("10.0.0.0/8, 203.0.113.7,2001:db8::/32").unwrap();
        assert!(networks.allows("10.1.2.3".parse().unwrap()));
        assert!(networks.allows("203.0.113.7".parse().unwrap()));
        assert!(!networks.allows("203.0.113.8".parse().unwrap()));
        assert!(networks.allows("2001:db8::1".parse().unwrap()));
        assert!(networks.allows("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!networks.allows("127.0.0.1".parse().unwrap()));
        assert!(SourceNetworks::parse("10.0.0.0/33").is_err());
        assert!(SourceNetworks::parse(" , ").is_err());
    }

    #[test]
    fn a_signature_seen_with_another_body_is_a_replay() {
        let recent = RecentSignatures::default();
        assert!(recent.check("sig-a", b"merchant 10 UP"));
        // A retry: the same body.
        assert!(recent.check("sig-a", b"merchant 10 UP"));
        assert!(!recent.check("sig-a", b"merchant 77 DN"));
        assert!(recent.check("sig-b", b"merchant 77 DN"));
    }
}
