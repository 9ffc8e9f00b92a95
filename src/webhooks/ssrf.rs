//! Where callback URLs may point. By default only public addresses: a merchant-supplied
//! URL must not make the worker call its own database, the cloud metadata service or any
//! other internal host. Operators allow specific networks (`WEBHOOK_ALLOW_NETWORKS`, e.g.
//! `127.0.0.0/8` for local testing).
//!
//! The check runs in the HTTP client's DNS resolver, so it applies to the address actually
//! connected to (a name that resolves to a public address at validation time and to an
//! internal one later, "DNS rebinding", is still refused). Redirects are not followed.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Which addresses callbacks may reach.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allow: Vec<IpNet>,
}

impl NetworkPolicy {
    /// Parses a comma-separated list of CIDR networks allowed in addition to public ones.
    pub fn parse(allow: &str) -> Result<Self, String> {
        let allow = allow
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{s}` is not a network like 10.0.0.0/8 or an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Refuses internal addresses that are not explicitly allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match internal_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "callback address {ip} is {kind}; refused (allow it with WEBHOOK_ALLOW_NETWORKS)"
            )),
        }
    }
}

/// What kind of non-public address `ip` is, if it is one.
fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (seg0 & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (seg0 & 0xfe00) == 0xfc00 {
                Some("a private (unique local) address")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
                || seg0 == 0x2001 && v6.segments()[1] == 0xdb8
            {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

fn v4_kind(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() {
        Some("private")
    } else if v4.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if v4.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
        Some("broadcast, multicast or reserved")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else if v4.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("reserved")
    } else {
        None
    }
}

/// The resolver's error when every address of a callback host is refused by the policy.
/// Delivery code finds it in the error's source chain and fails the delivery at once
/// instead of retrying it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PolicyRefusal(pub String);

/// A DNS resolver that drops addresses the policy refuses, failing when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<NetworkPolicy>,
}

impl GuardedResolver {
    /// Wraps the system resolver with `policy`.
    pub fn new(policy: Arc<NetworkPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refusal = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(match refusal {
                    Some(why) => {
                        Box::new(PolicyRefusal(why)) as Box<dyn std::error::Error + Send + Sync>
                    }
                    None => format!("{host} did not resolve").into(),
                });
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let p = NetworkPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(p.check(ip.parse().unwrap()).is_ok(), "{ip}");
        }
    }

    #[test]
    fn allow_list_opens_specific_networks() {
        let p = NetworkPolicy::parse("127.0.0.0/8, ::1").unwrap();
        assert!(p.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check("::1".parse().unwrap()).is_ok());
        assert!(p.check("10.0.0.1".parse().unwrap()).is_err());
        assert!(NetworkPolicy::parse("nonsense")
            .unwrap_err()
            .contains("not a network"));
        let msg = NetworkPolicy::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(msg.contains("link-local"), "{msg}");
    }
}
