//! Calls we make to addresses our users chose (job webhooks): the SSRF guard.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether an address is loopback, private, link-local (cloud metadata), or otherwise not a
/// public destination.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                // 198.18.0.0/15, benchmarking
                || (v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18)
                // 240.0.0.0/4, reserved (and the broadcast address)
                || v4.octets()[0] >= 240
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Every form that carries an IPv4 address, which could be a private one: the
                // IPv4-mapped ::ffff:0:0/96 and IPv4-compatible ::/96, NAT64 64:ff9b::/96 and
                // 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32.
                || v6.to_ipv4_mapped().is_some()
                || s[..6] == [0; 6]
                || (s[0] == 0x64 && s[1] == 0xff9b && (s[2] == 1 || s[2..6] == [0; 4]))
                || s[0] == 0x2002
                || (s[0] == 0x2001 && s[1] == 0)
                // 2001:db8::/32, documentation
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// How the names of user-chosen targets resolve: with the system resolver, unless a hosts file
/// is configured; its entries (`/etc/hosts` format, read again at every lookup) come first. For
/// tests that rebind a name mid-flight, and for operators who pin names.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts_file: Option<PathBuf>,
}

impl Resolver {
    pub fn new(hosts_file: Option<PathBuf>) -> Resolver {
        Resolver { hosts_file }
    }

    /// Every address of `host`, with `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(path) = &self.hosts_file {
            let text = tokio::fs::read_to_string(path).await?;
            let pinned = hosts_entries(&text, host);
            if !pinned.is_empty() {
                return Ok(pinned
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect());
            }
        }
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The addresses a hosts file gives `host` (lines `ADDRESS NAME...`, `#` comments).
fn hosts_entries(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('#').next()?.split_whitespace();
            let ip = fields.next()?.parse::<IpAddr>().ok()?;
            fields
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some(ip)
        })
        .collect()
}

/// Refuses a URL that is not http(s), or whose host resolves to a private address (unless
/// `allow_private`). Checked at submission and again before every delivery (DNS may change).
pub async fn check_target(
    url: &str,
    allow_private: bool,
    resolver: &Resolver,
) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "callback_url must be an absolute URL".to_owned())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("callback_url must use http or https".to_owned());
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| "callback_url needs a host".to_owned())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("callback_url must not carry credentials".to_owned());
    }
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolver
            .lookup(host, port)
            .await
            .map_err(|_| format!("callback_url host {host} does not resolve"))?
            .into_iter()
            .map(|a| a.ip())
            .collect(),
    };
    if addresses.is_empty() || addresses.into_iter().any(is_private) {
        return Err("callback_url must point to a public address".to_owned());
    }
    Ok(())
}

/// The HTTP client for user-chosen targets: no redirects, no proxy from the environment, and
/// (unless `allow_private`) a resolver that answers only public addresses. The connection then
/// goes to an address checked when it is made, not to whatever the name resolves to after an
/// earlier check: a name that answers a public address to `check_target` and a private one a
/// moment later (DNS rebinding) cannot reach the private one.
pub fn client(allow_private: bool, resolver: Resolver) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if allow_private {
        return builder.build();
    }
    builder
        .dns_resolver(Arc::new(PublicOnly { resolver }))
        .build()
}

/// Resolves with `resolver` and refuses the name if any answer is not public.
struct PublicOnly {
    resolver: Resolver,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let addresses = resolver.lookup(&host, 0).await?;
            if addresses.is_empty() || addresses.iter().any(|a| is_private(a.ip())) {
                return Err(format!("{host} resolves to an address that is not public").into());
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "ff02::1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "198.20.0.1",
            "223.255.255.1",
            "2001:4860::8888",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn targets_are_checked() {
        assert!(
            check_target("http://127.0.0.1:9000/hook", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target(
                "http://169.254.169.254/latest/meta-data",
                false,
                &Resolver::default()
            )
            .await
            .is_err()
        );
        assert!(
            check_target("http://[::1]/x", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target("http://localhost/x", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target("ftp://8.8.8.8/x", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target("http://user:pw@8.8.8.8/x", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target("not a url", false, &Resolver::default())
                .await
                .is_err()
        );
        assert!(
            check_target("https://8.8.8.8/hook", false, &Resolver::default())
                .await
                .is_ok()
        );
        assert!(
            check_target("http://127.0.0.1:9000/hook", true, &Resolver::default())
                .await
                .is_ok()
        );
    }

    /// A name that resolves to a private address when the connection is made is refused by
    /// the client itself, whatever an earlier check said (the DNS rebinding case): here
    /// `localhost`, served by a real listener that must never be reached.
    #[tokio::test]
    async fn the_client_connects_only_to_public_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        let guarded = client(false, Resolver::default()).unwrap();
        let refused = guarded
            .get(format!("http://localhost:{port}/hook"))
            .send()
            .await;
        assert!(refused.is_err(), "a private address was reached by name");
        let open = client(true, Resolver::default()).unwrap();
        let reached = open.get(format!("http://localhost:{port}/hook")).send();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reached).await;
        assert!(
            accepted.await.unwrap(),
            "the permissive client never connected"
        );
    }

    /// A name rebound between the check and the connection: the hosts file gives a public
    /// address when `check_target` looks, then 127.0.0.1 (where a real listener waits) when
    /// the client connects. The client vets the address it connects to, so it never connects.
    #[tokio::test]
    async fn a_name_rebound_after_the_check_is_refused_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        let hosts = std::env::temp_dir().join(format!("egress-hosts-{}", std::process::id()));
        std::fs::write(&hosts, "# pinned\n8.8.8.8 rebind.test other.test\n").unwrap();
        let resolver = Resolver::new(Some(hosts.clone()));
        let url = format!("http://rebind.test:{port}/hook");
        check_target(&url, false, &resolver).await.unwrap();
        std::fs::write(&hosts, "127.0.0.1 rebind.test\n").unwrap();
        assert!(check_target(&url, false, &resolver).await.is_err());
        let refused = client(false, resolver).unwrap().get(&url).send().await;
        let error = format!(
            "{:?}",
            refused.expect_err("a rebound name was connected to")
        );
        assert!(error.contains("not public"), "{error}");
        std::fs::remove_file(&hosts).unwrap();
        // The refusal came from the resolver, before any connection was attempted.
        assert!(!accepted.is_finished(), "the listener was reached");
        accepted.abort();
    }

    #[test]
    fn hosts_entries_are_matched_by_name() {
        let text = "127.0.0.1 localhost\n# 10.0.0.1 commented.test\n::1 six.test SIX.other # x\n";
        assert_eq!(
            hosts_entries(text, "six.other"),
            ["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_entries(text, "commented.test").is_empty());
        assert!(hosts_entries(text, "missing.test").is_empty());
    }
}
