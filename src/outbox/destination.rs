//! Where referral data may be sent when the address comes from a tenant (a CBO's webhook
//! endpoint, an EHR client's Subscription) rather than from the operator: only to
//! public addresses. Otherwise a registered URL could make the gateway call its own
//! admin ports, a cloud metadata service (169.254.169.254) or hosts on the internal
//! network (server-side request forgery).
//!
//! Two checks, one rule ([`allowed`]):
//! - [`url_problem`] reads a URL with the parser the HTTP client itself uses (`url`, the
//!   WHATWG rules), so every spelling it takes for an IPv4 or IPv6 address
//!   (`2130706433`, `0x7f.1`, `127.1`, `[::ffff:7f00:1]` …) is judged as the address it
//!   becomes. It runs at registration and again before every send, so a literal is
//!   checked as the address dialled.
//! - [`PublicOnly`] resolves names for the tenant client and keeps only allowed
//!   addresses, at every connection, so a name that later resolves to a private
//!   address is refused too (DNS rebinding).
//!
//! The client for tenant addresses follows no redirect and uses no proxy, so nothing
//! else decides where a connection goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

/// Whether `ip` is reachable on the public internet: not loopback, private, shared
/// (CGNAT), link-local, unspecified, multicast, broadcast, reserved, benchmarking or
/// documentation space. IPv6 forms that carry an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (RFC 6598, carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments (RFC 6890) and the deprecated 6to4 relay anycast.
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 88 && c == 99)
        // Benchmarking (RFC 2544).
        || (a == 198 && (18..20).contains(&b))
        // Reserved for future use (RFC 1112), 240.0.0.0/4.
        || a >= 240)
}

/// The IPv4 address an IPv6 address stands for, where its form says so: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`, deprecated but still parsed), NAT64
/// (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    match s {
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast (2000::/3) is routed on the internet …
    let global_unicast = s[0] & 0xe000 == 0x2000;
    // … less its special-purpose blocks: Teredo (2001::/32, which hides an IPv4
    // address), benchmarking (2001:2::/48), ORCHID (2001:10::/28, 2001:20::/28) and
    // documentation (2001:db8::/32).
    let special = (s[0] == 0x2001 && s[1] == 0)
        || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0)
        || (s[0] == 0x2001 && (0x10..0x30).contains(&s[1]))
        || (s[0] == 0x2001 && s[1] == 0xdb8);
    global_unicast && !special
}

/// Whether a tenant may send to `ip`; loopback only when the gateway allows it (local
/// testing, `CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1`).
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    is_public(ip) || (allow_loopback && is_loopback(ip))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `localhost` and its subdomains always name loopback (RFC 6761 §6.3), whatever DNS says.
fn names_loopback(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// What is wrong with `url` as a destination for referral data that a tenant chose, if
/// anything: https only; plain http only to loopback and only with `allow_insecure`;
/// no user info; no address that is not public. The rule for webhook endpoints,
/// Subscription channels, connectors and EHR servers alike.
pub fn url_problem(url: &str, allow_insecure: bool) -> Option<&'static str> {
    verdict(url, allow_insecure).err()
}

const NOT_PUBLIC: &str =
    "must not point at a loopback, private, link-local or otherwise non-public address";
const NO_HOST: &str = "must name a host (and no user info)";

fn verdict(url: &str, allow_insecure: bool) -> Result<(), &'static str> {
    let parsed = Url::parse(url).map_err(|_| "must be an absolute https:// URL")?;
    // The parser forgives `https:///host` and backslashes; a registration is exact.
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if authority.is_empty() || url.contains('\\') {
        return Err(NO_HOST);
    }
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("must be an https:// URL");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(NO_HOST);
    }
    let loopback = match parsed.host() {
        None | Some(Host::Domain("")) => return Err(NO_HOST),
        Some(Host::Ipv4(ip)) => literal(IpAddr::V4(ip), allow_insecure)?,
        Some(Host::Ipv6(ip)) => literal(IpAddr::V6(ip), allow_insecure)?,
        Some(Host::Domain(name)) if names_loopback(name) => {
            literal(IpAddr::V4(Ipv4Addr::LOCALHOST), allow_insecure)?
        }
        // Any other name is checked as it resolves, at every connection ([`PublicOnly`]).
        Some(Host::Domain(_)) => false,
    };
    if parsed.scheme() == "http" && !(allow_insecure && loopback) {
        return Err(
            "must be https:// (plain http only to a loopback address, with CROSSWAY_ALLOW_INSECURE_WEBHOOKS=1)",
        );
    }
    Ok(())
}

/// A literal address is allowed or refused as it stands; `Ok(true)` when it is loopback.
fn literal(ip: IpAddr, allow_insecure: bool) -> Result<bool, &'static str> {
    if allowed(ip, allow_insecure) {
        Ok(is_loopback(ip))
    } else {
        Err(NOT_PUBLIC)
    }
}

/// A resolver that keeps only the addresses a tenant may send to.
pub struct PublicOnly {
    pub allow_loopback: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| allowed(a.ip(), allow_loopback))
                .collect();
            if kept.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            // IPv4-compatible, NAT64 and 6to4 forms of private addresses.
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            // Teredo, documentation, benchmarking, local-use NAT64.
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "2001:2::1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert!(allowed("127.0.0.1".parse().unwrap(), true));
        assert!(allowed("::1".parse().unwrap(), true));
        assert!(!allowed("10.0.0.1".parse().unwrap(), true));
    }

    #[test]
    fn urls_are_judged_as_the_http_client_reads_them() {
        assert_eq!(url_problem("https://cbo.example.org/hooks", false), None);
        assert_eq!(url_problem("https://8.8.8.8/hooks", false), None);
        assert_eq!(url_problem("http://127.0.0.1:9000/h", true), None);
        assert_eq!(url_problem("http://localhost:9000/h", true), None);
        assert_eq!(url_problem("http://[::1]:9000/h", true), None);
        for (url, allow) in [
            // Spellings the URL parser reads as loopback or the metadata address.
            ("https://2130706433/", false),
            ("https://0x7f.1/", false),
            ("https://127.1/", false),
            ("https://0/", false),
            ("https://0177.0.0.1/", false),
            ("https://2852039166/latest/meta-data", true),
            ("https://0xa9.0xfe.0xa9.0xfe/", true),
            ("https://[::ffff:7f00:1]/", false),
            ("https://[::127.0.0.1]/", false),
            ("https://[64:ff9b::a9fe:a9fe]/", true),
            ("https://localhost/", false),
            ("https://api.localhost./", false),
            ("https://LOCALHOST:8443/", false),
            // http stays loopback-only, https to a private network never.
            ("http://cbo.example.org/h", true),
            ("http://127.0.0.1/h", false),
            ("https://10.0.0.5/h", true),
            ("ftp://cbo.example.org/", true),
            ("https://user:pw@cbo.example.org/", false),
            ("not a url", false),
        ] {
            assert!(url_problem(url, allow).is_some(), "{url} {allow}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_allowed() {
        let name = |s: &str| s.parse::<Name>().unwrap();
        let refused = PublicOnly {
            allow_loopback: false,
        }
        .resolve(name("localhost"))
        .await;
        assert!(refused.is_err());
        let allowed: Vec<SocketAddr> = PublicOnly {
            allow_loopback: true,
        }
        .resolve(name("localhost"))
        .await
        .unwrap()
        .collect();
        assert!(!allowed.is_empty() && allowed.iter().all(|a| a.ip().is_loopback()));
    }
}
