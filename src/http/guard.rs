//! The destination guard: health data only leaves for globally routable addresses.
//!
//! A partner URL is configuration, but what its host name resolves to is decided by
//! whoever runs the partner's DNS, at every lookup. Without this guard a misconfigured or
//! hostile name (or one rebound after the config was checked) could make the dispatcher
//! POST patient data into our own network: the cloud metadata service, a database, an
//! admin interface. So the check is made on the addresses DNS actually returned, at
//! connect time, inside the HTTP client's resolver ([`GuardedResolver`]): only addresses
//! that pass are handed to the connector, so the address checked is the address used.
//! URLs whose host is a literal IP skip the resolver and are checked before sending
//! ([`DestinationPolicy::check_url`]).
//!
//! `allow_insecure = true` opens the guard for a partner (local testing);
//! `allow_networks = ["127.0.0.0/8", ...]` opens it for the listed networks only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::Partner;

/// Why an address is not a partner's: the special-purpose ranges (IANA registries for
/// IPv4 and IPv6) that are not globally routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 0.0.0.0/8, `::`.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 (RFC 1918).
    Private,
    /// 100.64.0.0/10 (RFC 6598).
    SharedAddressSpace,
    /// 169.254.0.0/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 192.0.0.0/24 (RFC 6890), 2001::/23 (Teredo, ORCHID, ...), 100::/64 (discard-only).
    ProtocolAssignment,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48.
    Benchmarking,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, 192.88.99.0/24, fec0::/10, and IPv6 outside 2000::/3 or NAT64 local use.
    Reserved,
    /// fc00::/7 (RFC 4193).
    UniqueLocal,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private-network (RFC 1918)",
            AddressClass::SharedAddressSpace => "shared (carrier-grade NAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::ProtocolAssignment => "IETF protocol assignment",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
            AddressClass::UniqueLocal => "unique-local (fc00::/7)",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a destination was not connected to. Names the host and the address class; a
/// host name carries no credentials (those would be in the URL's user info or query).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("destination refused: {host} is {address}, a {class} address; only globally routable addresses are allowed (see allow_networks)")]
    Refused {
        host: String,
        address: IpAddr,
        class: AddressClass,
    },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
}

impl GuardError {
    /// True when the destination itself is refused (as opposed to DNS failing).
    pub fn is_refused(&self) -> bool {
        matches!(self, GuardError::Refused { .. })
    }
}

/// `None` when `address` is globally routable; otherwise its special-purpose class.
pub fn classify(address: IpAddr) -> Option<AddressClass> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(address: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = address.octets();
    let class = match (a, b, c) {
        _ if address.is_broadcast() => AddressClass::Broadcast,
        (0, _, _) => AddressClass::Unspecified,
        (10, _, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedAddressSpace,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (172, 16..=31, _) => AddressClass::Private,
        (192, 0, 0) => AddressClass::ProtocolAssignment,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (192, 88, 99) => AddressClass::Reserved,
        (192, 168, _) => AddressClass::Private,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(address: Ipv6Addr) -> Option<AddressClass> {
    let segments = address.segments();
    if address.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if address.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    // Forms that carry an IPv4 address are judged by that address: ::ffff:a.b.c.d
    // (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::a.b.c.d (NAT64).
    if let Some(v4) = address.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(segments[6], segments[7]));
    }
    // 6to4: 2002:AABB:CCDD::/48 routes to the IPv4 address AA.BB.CC.DD.
    if segments[0] == 0x2002 {
        return classify_v4(embedded_v4(segments[1], segments[2]));
    }
    let class = match segments[0] {
        0xff00..=0xffff => AddressClass::Multicast,
        0xfe80..=0xfebf => AddressClass::LinkLocal,
        0xfec0..=0xfeff => AddressClass::Reserved,
        0xfc00..=0xfdff => AddressClass::UniqueLocal,
        0x0064 if segments[1] == 0xff9b && segments[2] == 1 => AddressClass::Reserved,
        0x0100 if segments[1..4] == [0, 0, 0] => AddressClass::ProtocolAssignment,
        0x2001 if segments[1] == 0x0db8 => AddressClass::Documentation,
        0x2001 if segments[1] == 2 && segments[2] == 0 => AddressClass::Benchmarking,
        0x2001 if segments[1] < 0x0200 => AddressClass::ProtocolAssignment,
        0x3fff if segments[1] < 0x1000 => AddressClass::Documentation,
        // IANA has allocated only 2000::/3 for global unicast.
        0x2000..=0x3fff => return None,
        _ => AddressClass::Reserved,
    };
    Some(class)
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// Which addresses one partner's requests may go to.
#[derive(Debug, Clone, Default)]
pub(crate) struct DestinationPolicy {
    /// `allow_insecure`: anything goes (local testing).
    pub open: bool,
    /// `allow_networks`: these networks pass even though they are not global.
    pub allowed_networks: Vec<IpNet>,
}

impl DestinationPolicy {
    pub fn of(partner: &Partner) -> DestinationPolicy {
        DestinationPolicy {
            open: partner.allow_insecure,
            allowed_networks: partner.allow_networks.clone(),
        }
    }

    /// Ok when this partner may connect to `address`; otherwise the refused class.
    pub fn permits(&self, address: IpAddr) -> Result<(), AddressClass> {
        if self.open {
            return Ok(());
        }
        // ::ffff:127.0.0.1 is 127.0.0.1 as far as allow_networks is concerned.
        let canonical = address.to_canonical();
        if self
            .allowed_networks
            .iter()
            .any(|network| network.contains(&address) || network.contains(&canonical))
        {
            return Ok(());
        }
        match classify(address) {
            None => Ok(()),
            Some(class) => Err(class),
        }
    }

    /// Checks a URL whose host is a literal IP (the HTTP client connects to those without
    /// asking the resolver). Host names pass here: [`GuardedResolver`] checks them.
    pub fn check_url(&self, url: &Url) -> Result<(), GuardError> {
        let address = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        self.permits(address).map_err(|class| GuardError::Refused {
            host: address.to_string(),
            address,
            class,
        })
    }

    /// Keeps the addresses this partner may connect to; refuses when none is left.
    pub fn filter(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        let mut first_refused = None;
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| match self.permits(address.ip()) {
                Ok(()) => true,
                Err(class) => {
                    first_refused.get_or_insert((address.ip(), class));
                    false
                }
            })
            .collect();
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        Err(match first_refused {
            Some((address, class)) => GuardError::Refused {
                host: host.to_string(),
                address,
                class,
            },
            None => GuardError::NoAddress {
                host: host.to_string(),
            },
        })
    }
}

/// The operating system's resolver (getaddrinfo on a blocking thread), as reqwest's own.
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addresses: Addrs = Box::new(addresses.collect::<Vec<_>>().into_iter());
            Ok(addresses)
        })
    }
}

/// The HTTP client's resolver: resolves with `inner`, then hands the connector only the
/// addresses the partner's [`DestinationPolicy`] permits.
pub(crate) struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
    inner: Arc<dyn Resolve>,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<DestinationPolicy>, inner: Arc<dyn Resolve>) -> Self {
        GuardedResolver { policy, inner }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = lookup.await?.collect();
            let allowed = policy.filter(&host, addresses)?;
            let allowed: Addrs = Box::new(allowed.into_iter());
            Ok(allowed)
        })
    }
}

/// For `dispatcher check`: resolves both of the partner's URLs now and reports the
/// first address the guard would refuse (or a failed lookup). At send time a name
/// that resolves to some allowed and some refused addresses is still used, through
/// the allowed ones only; this check warns about it all the same.
pub async fn check_destination(partner: &Partner) -> Result<(), GuardError> {
    check_destination_with(partner, &SystemResolver).await
}

pub(crate) async fn check_destination_with(
    partner: &Partner,
    resolver: &dyn Resolve,
) -> Result<(), GuardError> {
    let policy = DestinationPolicy::of(partner);
    let mut urls = vec![&partner.enrollment_url, &partner.user_action_url];
    if let Some(token_url) = partner.auth.as_ref().and_then(|auth| auth.token_url()) {
        urls.push(token_url);
    }
    for url in urls {
        policy.check_url(url)?;
        let Some(Host::Domain(host)) = url.host() else {
            continue;
        };
        let name: Name = host.parse().map_err(|_| GuardError::Resolve {
            host: host.to_string(),
            message: "not a valid host name".into(),
        })?;
        let addresses: Vec<SocketAddr> = resolver
            .resolve(name)
            .await
            .map_err(|error| GuardError::Resolve {
                host: host.to_string(),
                message: error.to_string(),
            })?
            .collect();
        if addresses.is_empty() {
            return Err(GuardError::NoAddress {
                host: host.to_string(),
            });
        }
        for address in addresses {
            policy
                .permits(address.ip())
                .map_err(|class| GuardError::Refused {
                    host: host.to_string(),
                    address: address.ip(),
                    class,
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn class(text: &str) -> Option<AddressClass> {
        classify(text.parse().expect("test address"))
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "93.184.215.14",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(address), None, "{address} is global");
        }
    }

    #[test]
    fn internal_ipv4_ranges_are_refused() {
        use AddressClass::*;
        for (address, expected) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("169.254.169.254", LinkLocal),
            ("192.0.0.8", ProtocolAssignment),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("192.88.99.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Broadcast),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn internal_ipv6_ranges_are_refused() {
        use AddressClass::*;
        for (address, expected) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Reserved),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", ProtocolAssignment),
            ("100::1", ProtocolAssignment),
            ("64:ff9b:1::1", Reserved),
            ("4000::1", Reserved),
            ("1::1", Reserved),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn ipv6_forms_of_internal_ipv4_addresses_are_refused() {
        use AddressClass::*;
        for (address, expected) in [
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::10.1.2.3", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2002:7f00:1::", Loopback),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn allow_networks_opens_only_the_listed_networks() {
        let policy = DestinationPolicy {
            open: false,
            allowed_networks: vec!["127.0.0.0/8".parse().expect("net")],
        };
        assert_eq!(policy.permits("127.0.0.1".parse().expect("ip")), Ok(()));
        assert_eq!(
            policy.permits("::ffff:127.0.0.1".parse().expect("ip")),
            Ok(())
        );
        assert_eq!(
            policy.permits("::1".parse().expect("ip")),
            Err(AddressClass::Loopback)
        );
        assert_eq!(
            policy.permits("10.0.0.1".parse().expect("ip")),
            Err(AddressClass::Private)
        );
        let open = DestinationPolicy {
            open: true,
            allowed_networks: Vec::new(),
        };
        assert_eq!(open.permits("10.0.0.1".parse().expect("ip")), Ok(()));
    }

    #[test]
    fn literal_ip_urls_are_checked_before_sending() {
        let policy = DestinationPolicy::default();
        for url in [
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:10.0.0.1]/hook",
            "https://0x7f000001/hook",
        ] {
            let error = policy.check_url(&url.parse().expect("url")).expect_err(url);
            assert!(error.is_refused(), "{url}: {error}");
        }
        assert!(policy
            .check_url(&"https://crm.example/hook".parse().expect("url"))
            .is_ok());
        let error = policy
            .check_url(&"https://user:hunter2@127.0.0.1/hook".parse().expect("url"))
            .expect_err("loopback");
        let message = error.to_string();
        assert!(message.contains("loopback"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// A DNS server played in-process: answers each lookup with the next list given.
    struct ScriptedDns {
        answers: Vec<Vec<IpAddr>>,
        lookups: AtomicUsize,
    }

    impl ScriptedDns {
        fn new(answers: &[&[&str]]) -> Arc<ScriptedDns> {
            Arc::new(ScriptedDns {
                answers: answers
                    .iter()
                    .map(|answer| {
                        answer
                            .iter()
                            .map(|ip| ip.parse().expect("test address"))
                            .collect()
                    })
                    .collect(),
                lookups: AtomicUsize::new(0),
            })
        }
    }

    impl Resolve for ScriptedDns {
        fn resolve(&self, _name: Name) -> Resolving {
            let turn = self.lookups.fetch_add(1, Ordering::SeqCst);
            let answer = self.answers[turn.min(self.answers.len() - 1)].clone();
            Box::pin(async move {
                let addresses: Addrs =
                    Box::new(answer.into_iter().map(|ip| SocketAddr::new(ip, 443)));
                Ok(addresses)
            })
        }
    }

    async fn resolve(resolver: &GuardedResolver) -> Result<Vec<IpAddr>, String> {
        match resolver
            .resolve("crm.partner.example".parse().expect("name"))
            .await
        {
            Ok(addresses) => Ok(addresses.map(|a| a.ip()).collect()),
            Err(error) => Err(error.to_string()),
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_an_internal_address_is_refused() {
        let dns = ScriptedDns::new(&[&["10.0.0.1"]]);
        let resolver = GuardedResolver::new(Arc::new(DestinationPolicy::default()), dns);
        let error = resolve(&resolver).await.expect_err("refused");
        assert!(
            error.contains("crm.partner.example") && error.contains("private-network"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn only_the_allowed_addresses_of_a_mixed_answer_are_handed_on() {
        let dns = ScriptedDns::new(&[&["169.254.169.254", "93.184.215.14", "fd00::1"]]);
        let resolver = GuardedResolver::new(Arc::new(DestinationPolicy::default()), dns);
        assert_eq!(
            resolve(&resolver).await,
            Ok(vec!["93.184.215.14".parse().expect("ip")])
        );
    }

    #[tokio::test]
    async fn a_rebound_name_is_refused_at_the_next_lookup() {
        // First lookup: a public address; the next, after the TTL ran out: the metadata service.
        let dns = ScriptedDns::new(&[&["93.184.215.14"], &["169.254.169.254"]]);
        let resolver = GuardedResolver::new(Arc::new(DestinationPolicy::default()), dns);
        assert!(resolve(&resolver).await.is_ok());
        let error = resolve(&resolver).await.expect_err("rebound");
        assert!(error.contains("link-local"), "{error}");
    }

    #[tokio::test]
    async fn check_destination_reports_a_url_that_resolves_to_a_refused_address() {
        let text = r#"
            [database]
            url = "postgres://dispatcher@127.0.0.1/dispatcher"
            [[partners]]
            name = "acme"
            support_programs = ["prog-1"]
            enrollment_url = "https://crm.partner.example/enroll"
            user_action_url = "https://crm.partner.example/action"
        "#;
        let config =
            crate::config::Config::parse(text, "test.toml", None, |_| None).expect("config");
        let partner = &config.partners[0];
        let public = ScriptedDns::new(&[&["93.184.215.14"]]);
        assert!(check_destination_with(partner, public.as_ref())
            .await
            .is_ok());
        let internal = ScriptedDns::new(&[&["93.184.215.14"], &["127.0.0.1"]]);
        let error = check_destination_with(partner, internal.as_ref())
            .await
            .expect_err("user_action_url resolves to loopback");
        assert!(error.is_refused() && error.to_string().contains("loopback"));
    }
}
