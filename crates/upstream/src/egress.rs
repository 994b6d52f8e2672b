//! Calls we make to addresses our users chose (job webhooks): the SSRF guard.

use std::net::{IpAddr, SocketAddr};
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

/// Refuses a URL that is not http(s), or whose host resolves to a private address (unless
/// `allow_private`). Checked at submission and again before every delivery (DNS may change).
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
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
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| format!("callback_url host {host} does not resolve"))?
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
pub fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if allow_private {
        return builder.build();
    }
    builder.dns_resolver(Arc::new(PublicOnly)).build()
}

/// Resolves with the system resolver and refuses the name if any answer is not public.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
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
            check_target("http://127.0.0.1:9000/hook", false)
                .await
                .is_err()
        );
        assert!(
            check_target("http://169.254.169.254/latest/meta-data", false)
                .await
                .is_err()
        );
        assert!(check_target("http://[::1]/x", false).await.is_err());
        assert!(check_target("http://localhost/x", false).await.is_err());
        assert!(check_target("ftp://8.8.8.8/x", false).await.is_err());
        assert!(
            check_target("http://user:pw@8.8.8.8/x", false)
                .await
                .is_err()
        );
        assert!(check_target("not a url", false).await.is_err());
        assert!(check_target("https://8.8.8.8/hook", false).await.is_ok());
        assert!(
            check_target("http://127.0.0.1:9000/hook", true)
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
        let guarded = client(false).unwrap();
        let refused = guarded
            .get(format!("http://localhost:{port}/hook"))
            .send()
            .await;
        assert!(refused.is_err(), "a private address was reached by name");
        let open = client(true).unwrap();
        let reached = open.get(format!("http://localhost:{port}/hook")).send();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reached).await;
        assert!(
            accepted.await.unwrap(),
            "the permissive client never connected"
        );
    }
}
