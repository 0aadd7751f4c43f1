//! Choosing the proxy of each request from the environment, as Go's
//! `http.ProxyFromEnvironment` (BuildKit's client) does: `HTTPS_PROXY` for `https`
//! URLs, `HTTP_PROXY` for `http` URLs (upper case first, then lower case),
//! `NO_PROXY` exceptions, and never a proxy for `localhost` or a loopback address.
//!
//! ureq holds one proxy per agent, so [`Agents`] keeps a direct agent and one agent
//! per proxy, and every request (every redirect hop) picks its own.

use std::net::IpAddr;

use url::{Host, Url};

use crate::redact_str;

/// The proxy settings found in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// The proxy of `http` URLs (`HTTP_PROXY`, `http_proxy`).
    pub http: Option<String>,
    /// The proxy of `https` URLs (`HTTPS_PROXY`, `https_proxy`).
    pub https: Option<String>,
    /// The exceptions (`NO_PROXY`, `no_proxy`).
    pub no_proxy: NoProxy,
}

impl ProxyEnv {
    /// The settings of this process's environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The settings from `get` (a variable's value by name); an empty value counts as
    /// unset, and the upper-case name wins.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let any = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(|n| get(n).filter(|v| !v.is_empty()))
        };
        ProxyEnv {
            http: any(["HTTP_PROXY", "http_proxy"]),
            https: any(["HTTPS_PROXY", "https_proxy"]),
            no_proxy: NoProxy::parse(&any(["NO_PROXY", "no_proxy"]).unwrap_or_default()),
        }
    }

    /// The proxy to reach `url` through, if any.
    pub fn proxy_for(&self, url: &Url) -> Option<&str> {
        let proxy = match url.scheme() {
            "https" => self.https.as_deref(),
            "http" => self.http.as_deref(),
            _ => None,
        }?;
        self.no_proxy.use_proxy(url).then_some(proxy)
    }
}

/// One `NO_PROXY` entry for addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IpRule {
    /// `10.0.0.0/8`, `fd00::/8`.
    Cidr(IpAddr, u8),
    /// `10.1.2.3`, `10.1.2.3:8080`, `[::1]:8080`.
    Ip(IpAddr, Option<String>),
}

/// One `NO_PROXY` entry for names: `example.com` (the name and its subdomains),
/// `.example.com` or `*.example.com` (subdomains only), optionally with `:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DomainRule {
    /// The name with a leading dot.
    suffix: String,
    /// Whether the name itself matches too.
    match_host: bool,
    port: Option<String>,
}

/// The parsed `NO_PROXY` list: comma-separated host names and domain suffixes
/// (leading dot or `*.` or neither), IP addresses, CIDR ranges, each optionally with a
/// port, or `*` for every host. Malformed entries are ignored, as Go does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    ips: Vec<IpRule>,
    domains: Vec<DomainRule>,
}

impl NoProxy {
    /// Parses a `NO_PROXY` value.
    pub fn parse(value: &str) -> Self {
        let mut np = NoProxy::default();
        for entry in value.split(',') {
            let p = entry.trim().to_ascii_lowercase();
            if p.is_empty() {
                continue;
            }
            if p == "*" {
                return NoProxy {
                    all: true,
                    ..NoProxy::default()
                };
            }
            if let Some(cidr) = parse_cidr(&p) {
                np.ips.push(cidr);
                continue;
            }
            let (host, port) = match split_host_port(&p) {
                Some(("", _)) => continue,
                Some((h, port)) => (h.to_string(), (!port.is_empty()).then(|| port.to_string())),
                None => (p.clone(), None),
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                np.ips.push(IpRule::Ip(ip.to_canonical(), port));
                continue;
            }
            let host = host.strip_prefix('*').unwrap_or(&host);
            if host.is_empty() {
                continue;
            }
            let match_host = !host.starts_with('.');
            let bare = host.trim_start_matches('.');
            // Internationalised names as the URL parser writes them (punycode).
            let bare = match Host::parse(bare) {
                Ok(Host::Domain(d)) if !bare.is_ascii() => d,
                _ => bare.to_string(),
            };
            np.domains.push(DomainRule {
                suffix: format!(".{bare}"),
                match_host,
                port,
            });
        }
        np
    }

    /// Whether a request to `url` may go through a proxy.
    pub fn use_proxy(&self, url: &Url) -> bool {
        let port = url
            .port_or_known_default()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let (name, ip) = match url.host() {
            None => return true,
            Some(Host::Domain(d)) => (d.to_ascii_lowercase(), None),
            Some(Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
            Some(Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a).to_canonical())),
        };
        if name == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return false;
        }
        if self.all {
            return false;
        }
        let port_ok = |p: &Option<String>| p.as_deref().is_none_or(|p| p == port);
        if let Some(ip) = ip {
            let hit = self.ips.iter().any(|r| match r {
                IpRule::Cidr(net, bits) => cidr_contains(*net, *bits, ip),
                IpRule::Ip(a, p) => *a == ip && port_ok(p),
            });
            if hit {
                return false;
            }
        }
        // Go matches names against every host, addresses written out included.
        !self.domains.iter().any(|d| {
            (name.ends_with(&d.suffix) || (d.match_host && name == d.suffix[1..]))
                && port_ok(&d.port)
        })
    }
}

/// `addr/bits`, the address canonical (IPv4-mapped IPv6 as IPv4).
fn parse_cidr(s: &str) -> Option<IpRule> {
    let (addr, bits) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return None;
    }
    Some(match addr.to_canonical() {
        // An IPv4-mapped IPv6 range stays meaningful for IPv4 addresses.
        IpAddr::V4(v4) if addr.is_ipv6() => IpRule::Cidr(IpAddr::V4(v4), bits.saturating_sub(96)),
        a => IpRule::Cidr(a, bits),
    })
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    let prefix = |a: u128, width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            a >> (width - u32::from(bits))
        }
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            prefix(u32::from(n).into(), 32) == prefix(u32::from(i).into(), 32)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => prefix(n.into(), 128) == prefix(i.into(), 128),
        _ => false,
    }
}

/// Go's `net.SplitHostPort`: `host:port` or `[v6]:port`; `None` without a port or
/// with a bare IPv6 address.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return (!port.contains(':')).then_some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// The HTTP agents: a direct one and one per proxy; see [`Agents::for_url`].
pub struct Agents {
    direct: ureq::Agent,
    env: ProxyEnv,
    proxied: Vec<(String, ureq::Agent)>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Proxy URLs may hold credentials: shown redacted.
        let proxies: Vec<String> = self.proxied.iter().map(|(p, _)| shown(p)).collect();
        f.debug_struct("Agents")
            .field("proxies", &proxies)
            .finish_non_exhaustive()
    }
}

impl Agents {
    /// One agent for everything (no proxy, or the configured one).
    pub fn single(agent: ureq::Agent) -> Self {
        Agents {
            direct: agent,
            env: ProxyEnv::default(),
            proxied: Vec::new(),
        }
    }

    /// A direct agent from `builder` plus one for each proxy of `env` that ureq can
    /// use (an `http://` proxy; a value without a scheme is one, as in Go). Other
    /// proxies are left out with a warning: their requests go direct.
    pub fn from_env(builder: impl Fn() -> ureq::AgentBuilder, mut env: ProxyEnv) -> Self {
        let mut proxied: Vec<(String, ureq::Agent)> = Vec::new();
        for (var, value) in [
            ("HTTP_PROXY", &mut env.http),
            ("HTTPS_PROXY", &mut env.https),
        ] {
            let Some(v) = value.clone() else { continue };
            if proxied.iter().any(|(p, _)| *p == v) {
                continue;
            }
            match ureq_proxy(&v) {
                Ok(p) => proxied.push((v, builder().proxy(p).build())),
                Err(why) => {
                    tracing::warn!("{var}={}: {why}; connecting directly instead", shown(&v));
                    *value = None;
                }
            }
        }
        Agents {
            direct: builder().build(),
            env,
            proxied,
        }
    }

    /// The agent for a request to `url`.
    pub fn for_url(&self, url: &Url) -> &ureq::Agent {
        self.env
            .proxy_for(url)
            .and_then(|p| self.proxied.iter().find(|(v, _)| v == p))
            .map_or(&self.direct, |(_, a)| a)
    }
}

/// A proxy value as shown: credentials redacted, also without a scheme.
fn shown(value: &str) -> String {
    if value.contains("://") {
        redact_str(value)
    } else {
        redact_str(&format!("http://{value}"))["http://".len()..].to_string()
    }
}

/// The ureq proxy for an environment value.
fn ureq_proxy(value: &str) -> std::result::Result<ureq::Proxy, String> {
    let text = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = Url::parse(&text).map_err(|e| format!("not a proxy URL ({e})"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{}:// proxies are not supported (http:// only)",
            url.scheme()
        ));
    }
    let host = match url.host() {
        Some(Host::Domain(d)) => d.to_string(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(_)) => return Err("IPv6 proxy addresses are not supported".into()),
        None => return Err("the proxy URL has no host".into()),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let creds = match (url.username(), url.password()) {
        ("", None) => String::new(),
        (u, p) => format!("{u}:{}@", p.unwrap_or("")),
    };
    ureq::Proxy::new(format!("http://{creds}{host}:{port}")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn via<'a>(e: &'a ProxyEnv, url: &str) -> Option<&'a str> {
        e.proxy_for(&Url::parse(url).unwrap())
    }

    #[test]
    fn scheme_picks_the_variable_and_upper_case_wins() {
        let e = env(&[
            ("HTTP_PROXY", "http://hp:3128"),
            ("http_proxy", "http://lower:1"),
            ("https_proxy", "http://sp:3129"),
        ]);
        assert_eq!(via(&e, "http://example.com/x"), Some("http://hp:3128"));
        assert_eq!(via(&e, "https://example.com/x"), Some("http://sp:3129"));
        // An empty value counts as unset.
        let e = env(&[("HTTP_PROXY", ""), ("http_proxy", "http://lower:1")]);
        assert_eq!(via(&e, "http://example.com/"), Some("http://lower:1"));
        assert_eq!(via(&e, "https://example.com/"), None);
        assert_eq!(via(&env(&[]), "http://example.com/"), None);
    }

    #[test]
    fn localhost_and_loopback_never_go_through_a_proxy() {
        let e = env(&[("HTTP_PROXY", "http://127.0.0.1:9"), ("HTTPS_PROXY", "p:1")]);
        for url in [
            "http://localhost:8080/",
            "http://LOCALHOST/",
            "http://127.0.0.1:40000/foo",
            "http://127.1.2.3/",
            "https://[::1]:443/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert_eq!(via(&e, url), None, "{url}");
        }
        // Go's rule is the exact name only.
        assert_eq!(
            via(&e, "http://localhost.example/"),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(via(&e, "http://10.0.0.1/"), Some("http://127.0.0.1:9"));
    }

    #[test]
    fn no_proxy_names_suffixes_ips_cidrs_and_ports() {
        let e = env(&[
            ("HTTP_PROXY", "http://proxy:3128"),
            (
                "NO_PROXY",
                " example.com, .internal.net ,*.corp.org,10.0.0.0/8, 192.168.1.5, \
                 fd00::/8, [2001:db8::1]:8080, api.test:8443, 172.16.0.1:80,,bad:port:x",
            ),
        ]);
        let direct = [
            "http://example.com/",
            "http://EXAMPLE.com/",
            "http://www.example.com/",
            "http://a.b.internal.net/",
            "http://x.corp.org/",
            "http://10.1.2.3/",
            "http://192.168.1.5:9000/",
            "http://[fd12::1]/",
            "http://[2001:db8::1]:8080/",
            "http://api.test:8443/",
            "http://172.16.0.1/",
        ];
        for url in direct {
            assert_eq!(via(&e, url), None, "{url}");
        }
        let proxied = [
            "http://notexample.com/",
            "http://internal.net/",
            "http://corp.org/",
            "http://11.0.0.1/",
            "http://192.168.1.6/",
            "http://[2001:db8::1]/",
            "http://api.test/",
            "http://172.16.0.1:8080/",
            "http://example.org/",
        ];
        for url in proxied {
            assert_eq!(via(&e, url), Some("http://proxy:3128"), "{url}");
        }
    }

    #[test]
    fn no_proxy_star_and_lower_case_variable() {
        let e = env(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "*")]);
        assert_eq!(via(&e, "https://example.com/"), None);
        let e = env(&[
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "other.com"),
            ("no_proxy", "example.com"),
        ]);
        assert_eq!(via(&e, "https://example.com/"), Some("http://p:1"));
        assert_eq!(via(&e, "https://other.com/"), None);
    }

    #[test]
    fn cidr_and_split_helpers() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some(IpRule::Cidr("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0/"), None);
        assert_eq!(parse_cidr("example.com/8"), None);
        assert!(cidr_contains(
            "0.0.0.0".parse().unwrap(),
            0,
            "8.8.8.8".parse().unwrap()
        ));
        assert!(!cidr_contains(
            "10.0.0.0".parse().unwrap(),
            8,
            "fd00::1".parse().unwrap()
        ));
        assert_eq!(split_host_port("a.com:80"), Some(("a.com", "80")));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(split_host_port("a.com"), None);
    }

    #[test]
    fn each_url_gets_its_agent() {
        let agents = Agents::from_env(
            ureq::AgentBuilder::new,
            env(&[
                ("HTTP_PROXY", "http://p:2"),
                ("HTTPS_PROXY", "http://p:2"),
                ("NO_PROXY", "example.com"),
            ]),
        );
        // One proxy, one agent (one connection pool) for both schemes.
        assert_eq!(agents.proxied.len(), 1);
        let agent = |u: &str| agents.for_url(&Url::parse(u).unwrap()) as *const ureq::Agent;
        let direct = &agents.direct as *const ureq::Agent;
        let proxied = &agents.proxied[0].1 as *const ureq::Agent;
        assert_eq!(agent("http://other.org/a"), proxied);
        assert_eq!(agent("https://other.org/a"), proxied);
        assert_eq!(agent("http://example.com/a"), direct);
        assert_eq!(agent("http://127.0.0.1:8080/a"), direct);
        let single = Agents::single(ureq::AgentBuilder::new().build());
        let only = &single.direct as *const ureq::Agent;
        assert_eq!(
            single.for_url(&Url::parse("http://other.org/").unwrap()) as *const _,
            only
        );
    }

    #[test]
    fn proxies_ureq_cannot_use_are_refused() {
        assert!(ureq_proxy("http://user:pw@proxy.example:3128/").is_ok());
        assert!(ureq_proxy("proxy.example:3128").is_ok());
        let e = ureq_proxy("https://proxy.example").unwrap_err();
        assert!(e.contains("https://"), "{e}");
        assert!(ureq_proxy("socks5://proxy.example").is_err());
        assert!(ureq_proxy("http://[::1]:3128").is_err());
        // Refused proxies are dropped: those requests go direct.
        let agents = Agents::from_env(
            ureq::AgentBuilder::new,
            env(&[("HTTPS_PROXY", "https://p:1"), ("HTTP_PROXY", "http://p:2")]),
        );
        assert_eq!(agents.env.https, None);
        assert_eq!(agents.env.http.as_deref(), Some("http://p:2"));
        assert_eq!(agents.proxied.len(), 1);
        assert_eq!(shown("u:secret@p:1"), "xxxxx:xxxxx@p:1");
        assert_eq!(shown("http://u:secret@p:1"), "http://xxxxx:xxxxx@p:1");
        assert!(!format!("{agents:?}").contains("secret"));
    }
}
