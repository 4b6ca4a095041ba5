//! The destination guard: health data only leaves for globally routable addresses.
//!
//! A partner URL is configuration, but what its host name resolves to is decided by
//! whoever runs the partner's DNS, at every lookup. Without this guard a misconfigured or
//! hostile name (or one rebound after the config was checked) could make the dispatcher
//! POST patient data into our own network: the cloud metadata service, a database, an
//! admin interface. So the check is made on the addresses DNS actually returned, at
//! connect time, inside the HTTP client's resolver (`GuardedResolver`): only addresses
//! that pass are handed to the connector, so the address checked is the address used.
//! URLs whose host is a literal IP skip the resolver and are checked before sending
//! (`DestinationPolicy::check_url`). Which addresses are not global is `http::address`'s
//! classification.
//!
//! `allow_insecure = true` opens the guard for a partner (local testing);
//! `allow_networks = ["127.0.0.0/8", ...]` opens it for the listed networks only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::Partner;
use crate::http::address::{classify, AddressClass};

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
