//! Where a bot's credentials may be sent, and which tenants a bot serves.
//!
//! The serviceUrl of an inbound activity is where replies, and therefore the bot's
//! access token, will go. Microsoft's SDKs shipped no such check (https://microsoft.github.io/teams-sdk/typescript/essentials/app-configuration/service-url-validation),
//! so this allowlist is botfleet's own defence: an activity whose serviceUrl is not
//! on it is rejected at the door and the connector refuses to call such a host.

use thiserror::Error;
use url::Url;

/// Why a serviceUrl or tenant was refused. Messages name the value and the setting
/// that would allow it, so an operator can act on them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("serviceUrl `{0}` is not a valid absolute URL")]
    InvalidServiceUrl(String),
    #[error(
        "serviceUrl `{url}` uses {scheme}; only https is allowed for hosts other than localhost"
    )]
    InsecureServiceUrl { url: String, scheme: String },
    #[error("serviceUrl host `{host}` is not allowed for this bot; allowed: the cloud's Teams hosts, localhost, and `additional_allowed_domains`")]
    HostNotAllowed { host: String },
    #[error("the activity carries no tenant id and this bot only serves listed tenants")]
    TenantMissing,
    #[error("tenant `{0}` is not in this bot's `allowed_tenants`")]
    TenantNotAllowed(String),
}

/// serviceUrl host allowlist of one bot: its cloud's hosts (exact match), the
/// additional domains (suffix match on a label boundary), and loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrlAllowlist {
    exact_hosts: Vec<String>,
    domains: Vec<String>,
    allow_any_host: bool,
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

impl ServiceUrlAllowlist {
    /// `additional_domains` may contain `*`, which turns host checking off (the
    /// server warns at start-up when a bot does that).
    pub fn new(cloud_hosts: &[String], additional_domains: &[String]) -> Self {
        let norm = |s: &String| {
            s.trim()
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase()
        };
        Self {
            exact_hosts: cloud_hosts.iter().map(norm).collect(),
            domains: additional_domains
                .iter()
                .filter(|d| d.trim() != "*")
                .map(norm)
                .filter(|d| !d.is_empty())
                .collect(),
            allow_any_host: additional_domains.iter().any(|d| d.trim() == "*"),
        }
    }

    /// True when `*` disabled host checking.
    pub fn allows_any_host(&self) -> bool {
        self.allow_any_host
    }

    /// Checks a serviceUrl; on success returns its (lower-case) host.
    pub fn check(&self, service_url: &str) -> Result<String, PolicyError> {
        let url = Url::parse(service_url)
            .map_err(|_| PolicyError::InvalidServiceUrl(service_url.to_owned()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| PolicyError::InvalidServiceUrl(service_url.to_owned()))?
            .to_ascii_lowercase();
        if is_loopback(&host) {
            return match url.scheme() {
                "http" | "https" => Ok(host),
                other => Err(PolicyError::InsecureServiceUrl {
                    url: service_url.to_owned(),
                    scheme: other.to_owned(),
                }),
            };
        }
        if url.scheme() != "https" {
            return Err(PolicyError::InsecureServiceUrl {
                url: service_url.to_owned(),
                scheme: url.scheme().to_owned(),
            });
        }
        let allowed = self.allow_any_host
            || self.exact_hosts.contains(&host)
            || self
                .domains
                .iter()
                .any(|d| host == *d || host.ends_with(&format!(".{d}")));
        if allowed {
            Ok(host)
        } else {
            Err(PolicyError::HostNotAllowed { host })
        }
    }
}

/// Tenants a bot serves; empty means any tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    allowed: Vec<String>,
}

impl TenantPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn allows_any(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Tenant ids are GUIDs; compared case-insensitively.
    pub fn check(&self, tenant: Option<&str>) -> Result<(), PolicyError> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let tenant = tenant.ok_or(PolicyError::TenantMissing)?;
        let lower = tenant.to_ascii_lowercase();
        if self.allowed.contains(&lower) {
            Ok(())
        } else {
            Err(PolicyError::TenantNotAllowed(tenant.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> ServiceUrlAllowlist {
        let hosts = crate::Cloud::preset("public")
            .expect("preset")
            .service_url_hosts;
        ServiceUrlAllowlist::new(&hosts, &["sovcloud-core.fr".to_owned()])
    }

    #[test]
    fn cloud_hosts_match_exactly() {
        let a = public();
        assert!(a.check("https://smba.trafficmanager.net/emea/").is_ok());
        assert!(a.check("https://SMBA.trafficmanager.net/amer/").is_ok());
        assert_eq!(
            a.check("https://evil.smba.trafficmanager.net/emea/"),
            Err(PolicyError::HostNotAllowed {
                host: "evil.smba.trafficmanager.net".into()
            })
        );
        assert!(a
            .check("https://smba.trafficmanager.net.evil.com/")
            .is_err());
    }

    #[test]
    fn additional_domains_match_on_label_boundary() {
        let a = public();
        assert!(a.check("https://smba.teams.sovcloud-core.fr/x/").is_ok());
        assert!(a.check("https://sovcloud-core.fr/").is_ok());
        assert!(a.check("https://evilsovcloud-core.fr/").is_err());
    }

    #[test]
    fn loopback_always_allowed_and_http_only_there() {
        let a = public();
        assert_eq!(
            a.check("http://127.0.0.1:4100/amer/"),
            Ok("127.0.0.1".into())
        );
        assert!(a.check("http://localhost:1/").is_ok());
        assert!(matches!(
            a.check("http://smba.trafficmanager.net/emea/"),
            Err(PolicyError::InsecureServiceUrl { .. })
        ));
        assert!(matches!(
            a.check("not a url"),
            Err(PolicyError::InvalidServiceUrl(_))
        ));
        assert!(a.check("ftp://localhost/").is_err());
    }

    #[test]
    fn star_disables_host_check_but_not_https() {
        let a = ServiceUrlAllowlist::new(&[], &["*".to_owned()]);
        assert!(a.allows_any_host());
        assert!(a.check("https://anything.example/").is_ok());
        assert!(a.check("http://anything.example/").is_err());
    }

    #[test]
    fn tenants() {
        let any = TenantPolicy::new(&[]);
        assert!(any.check(None).is_ok());
        let one = TenantPolicy::new(&["72F988BF-86f1-41af-91ab-2d7cd011db47".to_owned()]);
        assert!(one
            .check(Some("72f988bf-86f1-41af-91ab-2d7cd011db47"))
            .is_ok());
        assert_eq!(one.check(None), Err(PolicyError::TenantMissing));
        assert!(matches!(
            one.check(Some("other")),
            Err(PolicyError::TenantNotAllowed(_))
        ));
    }
}
