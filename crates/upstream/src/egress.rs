//! Calls we make to addresses our users chose (job webhooks): the SSRF guard.

use std::net::IpAddr;

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
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                // fc00::/7 unique local, fe80::/10 link local
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
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
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
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
}
