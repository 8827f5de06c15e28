//! `botfleet graph ...`: delegated Graph credentials over the admin API
//! (docs/graph.md, "Delegated access").

use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::client::AdminClient;
use super::error::CliError;
use super::output::Output;

#[derive(Subcommand, Debug)]
pub enum GraphCommand {
    /// Print the URL the integration user opens to sign in a delegated
    /// credential (valid 10 minutes, once). The app registration must list
    /// the printed redirect URI.
    SignIn {
        /// The credential's name ([[graph_auth.credentials]] name).
        name: String,
    },
    /// Delegated credentials and their status (ok, never_signed_in,
    /// consent_revoked, refresh_expired, refresh_invalid). Never a token.
    Credentials {
        /// Only this credential.
        name: Option<String>,
    },
    /// Refresh a delegated credential now, to check that it works.
    Refresh { name: String },
}

fn line(s: &Value) -> String {
    let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    format!(
        "{:<24} {:<16} {:<16} last refresh {:<24} {}",
        f("name"),
        f("bot"),
        f("status"),
        f("last_refresh"),
        s.get("last_error").and_then(Value::as_str).unwrap_or("")
    )
}

pub async fn run(
    client: &AdminClient,
    command: GraphCommand,
    json: bool,
) -> Result<Output, CliError> {
    match command {
        GraphCommand::SignIn { name } => {
            let a = client
                .send(
                    Method::POST,
                    &["graph", "credentials", &name, "sign-in"],
                    &[],
                    None,
                    None,
                )
                .await?;
            if json {
                return Ok(Output::json(&a.body));
            }
            let url = a
                .body
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut out = Output::text(format!("{url}\n"));
            out.notes.push(format!(
                "botfleet: open this URL as the integration user before {} (once). Redirect URI to register on the app: {}",
                a.body.get("expires_at").and_then(Value::as_str).unwrap_or("it expires"),
                a.body.get("redirect_uri").and_then(Value::as_str).unwrap_or("-"),
            ));
            Ok(out)
        }
        GraphCommand::Credentials { name } => {
            let body = match &name {
                Some(n) => client.get(&["graph", "credentials", n], &[]).await?.body,
                None => client.get(&["graph", "credentials"], &[]).await?.body,
            };
            if json {
                return Ok(Output::json(&body));
            }
            let rows: Vec<Value> = match name {
                Some(_) => vec![body],
                None => body
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            };
            Ok(Output::text(
                rows.iter().map(line).collect::<Vec<_>>().join("\n") + "\n",
            ))
        }
        GraphCommand::Refresh { name } => {
            let a = client
                .send(
                    Method::POST,
                    &["graph", "credentials", &name, "refresh"],
                    &[],
                    None,
                    None,
                )
                .await?;
            if json {
                return Ok(Output::json(&a.body));
            }
            Ok(Output::text(line(&a.body) + "\n"))
        }
    }
}
