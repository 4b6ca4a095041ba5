//! Which addresses are not a partner's: the special-purpose ranges of IPv4 and IPv6 that
//! are not globally routable (loopback, private, link-local where cloud metadata lives,
//! ...). A pure classification, kept apart from the guard that applies it to what DNS
//! answers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
