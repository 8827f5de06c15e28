//! Cloud presets: where a bot's tokens come from and where its replies may go.
//!
//! Values from https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication,
//! https://learn.microsoft.com/azure/bot-service/how-to-deploy-gov-cloud-high,
//! https://learn.microsoft.com/azure/bot-service/how-to-deploy-china-cloud and
//! https://microsoft.github.io/teams-sdk/typescript/essentials/app-configuration/service-url-validation. A custom cloud (tests, local
//! runs against botfleet-sim, sovereign clouds without a preset) is given in full
//! in configuration; there is no partial override, so nothing silently falls back
//! to public-cloud endpoints.

use serde::{Deserialize, Serialize};

/// One Bot Framework cloud: inbound token validation and outbound token endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    /// Preset name (`public`, `gcch`, `dod`, `china`) or a custom name.
    pub name: String,
    /// Bot Framework OpenID metadata document (channel -> bot tokens).
    pub openid_metadata_url: String,
    /// Required `iss` of channel -> bot tokens.
    pub token_issuer: String,
    /// Entra login endpoint without a tenant, e.g. `https://login.microsoftonline.com`.
    pub login_endpoint: String,
    /// Authority tenant for multi-tenant bots (`botframework.com` in the public cloud).
    pub multi_tenant_authority: String,
    /// Scope of bot -> connector tokens, `/.default` included.
    pub bot_scope: String,
    /// serviceUrl hosts this cloud's Teams service uses (exact host match).
    pub service_url_hosts: Vec<String>,
}

/// Preset names accepted in configuration.
pub const PRESETS: [&str; 4] = ["public", "gcch", "dod", "china"];

impl Cloud {
    /// A preset by name; `None` for a name that is not a preset.
    pub fn preset(name: &str) -> Option<Cloud> {
        let c = |name: &str,
                 metadata: &str,
                 issuer: &str,
                 login: &str,
                 authority: &str,
                 scope: &str,
                 hosts: &[&str]| Cloud {
            name: name.to_owned(),
            openid_metadata_url: metadata.to_owned(),
            token_issuer: issuer.to_owned(),
            login_endpoint: login.to_owned(),
            multi_tenant_authority: authority.to_owned(),
            bot_scope: scope.to_owned(),
            service_url_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        };
        match name {
            "public" => Some(c(
                "public",
                "https://login.botframework.com/v1/.well-known/openidconfiguration",
                "https://api.botframework.com",
                "https://login.microsoftonline.com",
                "botframework.com",
                "https://api.botframework.com/.default",
                &[
                    "smba.trafficmanager.net",
                    "smba.onyx.prod.teams.trafficmanager.net",
                    "smba.infra.gcc.teams.microsoft.com",
                ],
            )),
            "gcch" => Some(c(
                "gcch",
                "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
                "https://api.botframework.us",
                "https://login.microsoftonline.us",
                "MicrosoftServices.onmicrosoft.us",
                "https://api.botframework.us/.default",
                &["smba.infra.gov.teams.microsoft.us"],
            )),
            "dod" => Some(c(
                "dod",
                "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
                "https://api.botframework.us",
                "https://login.microsoftonline.us",
                "MicrosoftServices.onmicrosoft.us",
                "https://api.botframework.us/.default",
                &["smba.infra.dod.teams.microsoft.us"],
            )),
            "china" => Some(c(
                "china",
                "https://login.botframework.azure.cn/v1/.well-known/openidconfiguration",
                "https://api.botframework.azure.cn",
                "https://login.partner.microsoftonline.cn",
                "microsoftservices.partner.onmschina.cn",
                "https://api.botframework.azure.cn/.default",
                &["frontend.botapi.msg.infra.teams.microsoftonline.cn"],
            )),
            _ => None,
        }
    }

    /// Microsoft Graph of a preset cloud: `(graph_url, graph_openid_metadata_url)`,
    /// the Graph v1.0 base and the OpenID metadata whose keys sign Graph's
    /// change-notification validation tokens
    /// (https://learn.microsoft.com/graph/deployments#microsoft-graph-and-graph-explorer-service-root-endpoints,
    /// https://learn.microsoft.com/graph/change-notifications-with-resource-data#validation-tokens-in-the-change-notification).
    /// `None` for a custom cloud: botfleet's `[graph]` settings give both.
    pub fn graph_endpoints(&self) -> Option<(&'static str, &'static str)> {
        match self.name.as_str() {
            "public" => Some((
                "https://graph.microsoft.com/v1.0",
                "https://login.microsoftonline.com/common/.well-known/openid-configuration",
            )),
            "gcch" => Some((
                "https://graph.microsoft.us/v1.0",
                "https://login.microsoftonline.us/common/.well-known/openid-configuration",
            )),
            "dod" => Some((
                "https://dod-graph.microsoft.us/v1.0",
                "https://login.microsoftonline.us/common/.well-known/openid-configuration",
            )),
            "china" => Some((
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://login.partner.microsoftonline.cn/common/.well-known/openid-configuration",
            )),
            _ => None,
        }
    }

    /// The token endpoint for a bot: the cloud's multi-tenant authority, or the
    /// bot's own tenant for single-tenant bots (all new registrations).
    pub fn token_url(&self, single_tenant: Option<&str>) -> String {
        let tenant = single_tenant.unwrap_or(&self.multi_tenant_authority);
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_endpoint.trim_end_matches('/'),
            tenant
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_exist_and_unknown_names_do_not() {
        for name in PRESETS {
            let c = Cloud::preset(name).expect("preset");
            assert_eq!(c.name, name);
            assert!(c.openid_metadata_url.starts_with("https://"));
            assert!(c.bot_scope.ends_with("/.default"));
        }
        assert!(Cloud::preset("mars").is_none());
    }

    #[test]
    fn token_url_uses_tenant_for_single_tenant_bots() {
        let public = Cloud::preset("public").expect("preset");
        assert_eq!(
            public.token_url(None),
            "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
        );
        assert_eq!(
            public.token_url(Some("t1")),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
    }
}
