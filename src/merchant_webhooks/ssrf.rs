//! Where callback URLs may point. By default only globally reachable addresses: a
//! merchant-supplied URL must not make the worker call its own database, the cloud metadata
//! service or any other internal host. Operators allow specific networks
//! (`WEBHOOK_ALLOW_NETWORKS`, e.g. `127.0.0.0/8` for local testing).
//!
//! The verdict comes from the IANA IPv4 and IPv6 Special-Purpose Address Registries
//! ([`V4_SPECIAL`], [`V6_SPECIAL`]): every entry whose "Globally Reachable" is not `True`
//! is refused, the most specific entry deciding (`192.0.0.9/32`, PCP anycast, is reachable
//! inside the unreachable `192.0.0.0/24`). Ranges outside those registries that are not
//! unicast either (multicast, IPv6 outside `2000::/3`, deprecated site-local) are in the
//! tables too, marked as such. IPv6 addresses that carry an IPv4 address a translator or
//! the kernel would connect to (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`) are judged
//! as that IPv4 address.
//!
//! The check runs in the HTTP client's DNS resolver, so it applies to the address actually
//! connected to (a name that resolves to a public address at validation time and to an
//! internal one later, "DNS rebinding", is still refused). Redirects are not followed, and
//! proxies from the environment are not used (the check would see only the proxy).

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
    pub(crate) fn parse(allow: &str) -> Result<Self, String> {
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

    /// Refuses addresses that are not globally reachable, unless explicitly allowed.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), String> {
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

/// How a table entry's addresses are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// "Globally Reachable: True": allowed.
    Global,
    /// "False", "N/A" (deprecated blocks), or not unicast at all: refused.
    Refused,
    /// The address embeds an IPv4 address (the low 32 bits) that is what is finally
    /// reached; judged as that IPv4 address.
    EmbeddedV4,
}

/// One registry entry: network, prefix length, name, verdict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<A> {
    /// First address of the block.
    pub base: A,
    /// Prefix length.
    pub len: u8,
    /// The registry's name for the block (with its source when not the special-purpose
    /// registry).
    pub name: &'static str,
    /// The verdict.
    pub reach: Reach,
}

const fn v4(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    len: u8,
    name: &'static str,
    reach: Reach,
) -> Entry<Ipv4Addr> {
    Entry {
        base: Ipv4Addr::new(a, b, c, d),
        len,
        name,
        reach,
    }
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], len: u8, name: &'static str, reach: Reach) -> Entry<Ipv6Addr> {
    Entry {
        base: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
        name,
        reach,
    }
}

use Reach::{EmbeddedV4, Global, Refused};

/// The IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry, as updated
/// 2024/2025), every entry, plus multicast (its own registry). "N/A" (deprecated) counts as
/// not reachable.
pub(crate) const V4_SPECIAL: &[Entry<Ipv4Addr>] = &[
    v4(0, 0, 0, 0, 8, "\"this network\" (RFC 791)", Refused),
    v4(
        0,
        0,
        0,
        0,
        32,
        "\"this host on this network\" (RFC 1122)",
        Refused,
    ),
    v4(10, 0, 0, 0, 8, "private-use (RFC 1918)", Refused),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared address space (CGNAT, RFC 6598)",
        Refused,
    ),
    v4(127, 0, 0, 0, 8, "loopback (RFC 1122)", Refused),
    v4(
        169,
        254,
        0,
        0,
        16,
        "link-local (cloud metadata lives here, RFC 3927)",
        Refused,
    ),
    v4(172, 16, 0, 0, 12, "private-use (RFC 1918)", Refused),
    v4(
        192,
        0,
        0,
        0,
        24,
        "IETF protocol assignments (RFC 6890)",
        Refused,
    ),
    v4(
        192,
        0,
        0,
        0,
        29,
        "IPv4 service continuity prefix (RFC 7335)",
        Refused,
    ),
    v4(192, 0, 0, 8, 32, "IPv4 dummy address (RFC 7600)", Refused),
    v4(
        192,
        0,
        0,
        9,
        32,
        "Port Control Protocol anycast (RFC 7723)",
        Global,
    ),
    v4(192, 0, 0, 10, 32, "TURN anycast (RFC 8155)", Global),
    v4(
        192,
        0,
        0,
        170,
        32,
        "NAT64/DNS64 discovery (RFC 7050)",
        Refused,
    ),
    v4(
        192,
        0,
        0,
        171,
        32,
        "NAT64/DNS64 discovery (RFC 7050)",
        Refused,
    ),
    v4(
        192,
        0,
        2,
        0,
        24,
        "documentation TEST-NET-1 (RFC 5737)",
        Refused,
    ),
    v4(192, 31, 196, 0, 24, "AS112-v4 (RFC 7535)", Global),
    v4(192, 52, 193, 0, 24, "AMT (RFC 7450)", Global),
    v4(
        192,
        88,
        99,
        0,
        24,
        "deprecated 6to4 relay anycast (RFC 7526)",
        Refused,
    ),
    v4(192, 88, 99, 2, 32, "6a44 relay anycast (RFC 6751)", Global),
    v4(192, 168, 0, 0, 16, "private-use (RFC 1918)", Refused),
    v4(
        192,
        175,
        48,
        0,
        24,
        "direct delegation AS112 service (RFC 7534)",
        Global,
    ),
    v4(198, 18, 0, 0, 15, "benchmarking (RFC 2544)", Refused),
    v4(
        198,
        51,
        100,
        0,
        24,
        "documentation TEST-NET-2 (RFC 5737)",
        Refused,
    ),
    v4(
        203,
        0,
        113,
        0,
        24,
        "documentation TEST-NET-3 (RFC 5737)",
        Refused,
    ),
    v4(240, 0, 0, 0, 4, "reserved (RFC 1112)", Refused),
    v4(
        255,
        255,
        255,
        255,
        32,
        "limited broadcast (RFC 919)",
        Refused,
    ),
    // Not in the special-purpose registry: the multicast registry's whole block.
    v4(
        224,
        0,
        0,
        0,
        4,
        "multicast (IPv4 multicast registry)",
        Refused,
    ),
];

/// The IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry, as updated
/// 2024/2025), every entry, plus what the IPv6 Address Space registry does not allocate
/// for global unicast (everything outside `2000::/3` but the blocks below).
pub(crate) const V6_SPECIAL: &[Entry<Ipv6Addr>] = &[
    v6(
        [0, 0, 0, 0, 0, 0, 0, 1],
        128,
        "loopback (RFC 4291)",
        Refused,
    ),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        128,
        "unspecified (RFC 4291)",
        Refused,
    ),
    // The registry says "False"; the kernel connects to the IPv4 address inside, so that
    // address decides (the registry's verdict for it is in V4_SPECIAL).
    v6(
        [0, 0, 0, 0, 0, 0xffff, 0, 0],
        96,
        "IPv4-mapped (RFC 4291)",
        EmbeddedV4,
    ),
    // "True" in the registry, but a NAT64 gateway forwards to the IPv4 address inside,
    // which may well be internal: that address decides.
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4-IPv6 translation (NAT64, RFC 6052)",
        EmbeddedV4,
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "IPv4-IPv6 translation, local use (RFC 8215)",
        Refused,
    ),
    v6(
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "discard-only (RFC 6666)",
        Refused,
    ),
    v6(
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "dummy IPv6 prefix (RFC 9780)",
        Refused,
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments (RFC 2928)",
        Refused,
    ),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        32,
        "Teredo (RFC 4380)",
        Refused,
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 1],
        128,
        "Port Control Protocol anycast (RFC 7723)",
        Global,
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 2],
        128,
        "TURN anycast (RFC 8155)",
        Global,
    ),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 3],
        128,
        "DNS-SD SRP anycast (RFC 9665)",
        Global,
    ),
    v6(
        [0x2001, 2, 0, 0, 0, 0, 0, 0],
        48,
        "benchmarking (RFC 5180)",
        Refused,
    ),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT (RFC 7450)", Global),
    v6(
        [0x2001, 4, 0x112, 0, 0, 0, 0, 0],
        48,
        "AS112-v6 (RFC 7535)",
        Global,
    ),
    v6(
        [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
        28,
        "deprecated ORCHID (RFC 4843)",
        Refused,
    ),
    v6(
        [0x2001, 0x20, 0, 0, 0, 0, 0, 0],
        28,
        "ORCHIDv2 (RFC 7343)",
        Global,
    ),
    v6(
        [0x2001, 0x30, 0, 0, 0, 0, 0, 0],
        28,
        "drone remote ID DETs (RFC 9374)",
        Global,
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation (RFC 3849)",
        Refused,
    ),
    v6(
        [0x2002, 0, 0, 0, 0, 0, 0, 0],
        16,
        "6to4 (RFC 3056)",
        Refused,
    ),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "direct delegation AS112 service (RFC 7534)",
        Global,
    ),
    v6(
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "documentation (RFC 9637)",
        Refused,
    ),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing SIDs (RFC 9602)",
        Refused,
    ),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "unique-local (RFC 4193)",
        Refused,
    ),
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "link-local (RFC 4291)",
        Refused,
    ),
    // Outside the special-purpose registry (IPv6 Address Space registry and RFC 4291):
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4-compatible, deprecated (RFC 4291)",
        Refused,
    ),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local, deprecated (RFC 3879)",
        Refused,
    ),
    v6(
        [0xff00, 0, 0, 0, 0, 0, 0, 0],
        8,
        "multicast (RFC 4291)",
        Refused,
    ),
    v6(
        [0, 0, 0, 0, 0, 0, 0, 0],
        0,
        "not in 2000::/3, the only block allocated for global unicast",
        Refused,
    ),
    v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, "global unicast", Global),
];

/// The most specific entry of `table` containing `ip` (`bits` wide, as an integer).
fn lookup<A: Copy>(
    table: &[Entry<A>],
    ip: u128,
    bits: u32,
    as_int: impl Fn(A) -> u128,
) -> Option<&Entry<A>> {
    table
        .iter()
        .filter(|e| {
            let len = u32::from(e.len);
            // A /0 contains everything; shifting by the full width would overflow.
            len == 0 || (ip ^ as_int(e.base)) >> (bits - len) == 0
        })
        .max_by_key(|e| e.len)
}

/// The V4 table entry deciding for `ip`, if any.
pub(crate) fn v4_entry(ip: Ipv4Addr) -> Option<&'static Entry<Ipv4Addr>> {
    lookup(V4_SPECIAL, u128::from(u32::from(ip)), 32, |a| {
        u128::from(u32::from(a))
    })
}

/// The V6 table entry deciding for `ip` (the table covers every address).
pub(crate) fn v6_entry(ip: Ipv6Addr) -> Option<&'static Entry<Ipv6Addr>> {
    lookup(V6_SPECIAL, u128::from(ip), 128, u128::from)
}

/// What kind of not globally reachable address `ip` is, if it is one.
fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => match v6_entry(v6) {
            None => Some("outside every known block"),
            Some(e) => match e.reach {
                Global => None,
                Refused => Some(e.name),
                EmbeddedV4 => {
                    let [.., a, b, c, d] = v6.octets();
                    v4_kind(Ipv4Addr::new(a, b, c, d))
                }
            },
        },
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    match v4_entry(ip) {
        Some(e) if e.reach != Global => Some(e.name),
        _ => None,
    }
}

/// The resolver's error when every address of a callback host is refused by the policy.
/// Delivery code finds it in the error's source chain and fails the delivery at once
/// instead of retrying it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PolicyRefusal(pub(crate) String);

/// The resolver's error when a callback host does not resolve: delivery code names it
/// instead of the HTTP client's "client error (Connect)".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DnsFailure(pub(crate) String);

/// A DNS resolver that drops addresses the policy refuses, failing when none is left.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    policy: Arc<NetworkPolicy>,
}

impl GuardedResolver {
    /// Wraps the system resolver with `policy`.
    pub(crate) fn new(policy: Arc<NetworkPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| DnsFailure(format!("{host} does not resolve (DNS): {e}")))?
                .collect();
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
                    None => Box::new(DnsFailure(format!("{host} did not resolve to any address"))),
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

    /// An address `e` decides for: its first, last or middle one (more specific entries
    /// own the others).
    fn inside<A: Copy + PartialEq + 'static>(
        e: &Entry<A>,
        bits: u32,
        as_int: impl Fn(A) -> u128,
        from_int: impl Fn(u128) -> A,
        owner: impl Fn(A) -> Option<&'static Entry<A>>,
    ) -> A {
        let is_e = |o: Option<&Entry<A>>| o.is_some_and(|o| o.base == e.base && o.len == e.len);
        let span = if e.len == 0 {
            u128::MAX >> (128 - bits)
        } else {
            (1u128 << (bits - u32::from(e.len))) - 1
        };
        let first = as_int(e.base);
        [first, first | span, first | ((span >> 1) + 1)]
            .into_iter()
            .map(&from_int)
            .find(|a| is_e(owner(*a)))
            .unwrap_or_else(|| panic!("no address of {} decides by it", e.name))
    }

    #[test]
    fn every_registry_entry_is_judged_by_its_globally_reachable_flag() {
        let p = NetworkPolicy::default();
        for e in V4_SPECIAL {
            let ip = inside(
                e,
                32,
                |a| u128::from(u32::from(a)),
                |n| Ipv4Addr::from(n as u32),
                v4_entry,
            );
            let verdict = p.check(IpAddr::V4(ip));
            match e.reach {
                Global => assert!(
                    verdict.is_ok(),
                    "{ip} ({}) must be allowed: {verdict:?}",
                    e.name
                ),
                _ => assert!(verdict.is_err(), "{ip} ({}) must be refused", e.name),
            }
        }
        for e in V6_SPECIAL {
            let ip = inside(e, 128, u128::from, Ipv6Addr::from, v6_entry);
            let verdict = p.check(IpAddr::V6(ip));
            match e.reach {
                Global => assert!(
                    verdict.is_ok(),
                    "{ip} ({}) must be allowed: {verdict:?}",
                    e.name
                ),
                Refused => assert!(verdict.is_err(), "{ip} ({}) must be refused", e.name),
                EmbeddedV4 => {
                    // Judged as the IPv4 address inside: internal ones refused, public allowed.
                    let prefix = u128::from(e.base);
                    for (v4, ok) in [
                        ("10.0.0.1", false),
                        ("127.0.0.1", false),
                        ("169.254.169.254", false),
                        ("8.8.8.8", true),
                    ] {
                        let v4: Ipv4Addr = v4.parse().unwrap();
                        let ip = Ipv6Addr::from(prefix | u128::from(u32::from(v4)));
                        assert_eq!(p.check(IpAddr::V6(ip)).is_ok(), ok, "{ip} ({})", e.name);
                    }
                }
            }
        }
    }

    #[test]
    fn ranges_the_old_policy_missed_are_refused() {
        let p = NetworkPolicy::default();
        for ip in [
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "::1.2.3.4",
            "::10.0.0.1",
            "2002::1",
            "2002:a00:1::1",
            "fec0::1",
            "2001::1",
            "2001:2::1",
            "3fff::1",
            "5f00::1",
            "100::1",
            "ff02::1",
            "4000::1",
            "192.0.0.1",
            "192.0.0.8",
            "192.0.0.170",
            "192.88.99.1",
            "198.19.255.255",
            "224.0.0.1",
        ] {
            assert!(p.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in [
            "64:ff9b::808:808",
            "192.0.0.9",
            "2001:4860:4860::8888",
            "1.1.1.1",
        ] {
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
