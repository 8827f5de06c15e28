//! `botfleet-sim send`: one activity, signed as Teams signs it, posted to a bot.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::activities::{build_activity, ActivityKind, ActivityParams, ConversationSpec};
use super::duration::parse_duration;
use super::sim_api::{ConversationRegistration, Member, SimApi, TokenRequest};
use super::ClientError;

/// Which key the sim signs a tampered token with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKey {
    /// A key published in the sim's JWKS but without the `msteams` endorsement.
    Unendorsed,
    /// A key the sim never published (a forged token).
    Foreign,
}

impl TokenKey {
    fn wire_name(self) -> &'static str {
        match self {
            TokenKey::Unendorsed => "unendorsed",
            TokenKey::Foreign => "foreign",
        }
    }
}

const SEND_AFTER_HELP: &str = "\
The token is minted by the running sim (POST /_sim/tokens): iss https://api.botframework.com, \
aud = --app-id, serviceurl = the activity's serviceUrl, signed with its msteams-endorsed key. \
The conversation is registered with the sim first, so the bot's reply is accepted by its Bot Connector.
Prints one JSON line: {\"status\",\"body\",\"activityId\",\"conversationId\"}.
Exit code: 0 when the bot answered 2xx, 1 when it answered anything else, 2 on usage or connection errors.";

/// Post ONE activity to a bot endpoint the way Teams' channel service does:
/// JSON body, `Authorization: Bearer <JWT>` minted by the running sim (issuer
/// https://api.botframework.com, audience = the app id, `serviceurl` claim = the
/// activity's serviceUrl). The conversation is registered with the sim first, so
/// the bot's reply is accepted by the sim's Bot Connector. Prints one JSON line
/// {"status","body","activityId","conversationId"}; exits 0 when the bot answered
/// 2xx, 1 when it answered anything else, 2 on usage or connection errors.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = SEND_AFTER_HELP)]
pub struct SendArgs {
    /// The bot's messaging endpoint, e.g. http://127.0.0.1:3978/api/messages.
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// The running botfleet-sim (the `url` of its ready line): tokens are minted
    /// there and the conversation is registered there.
    #[arg(long, value_name = "URL", env = "BOTFLEET_SIM_URL")]
    pub sim: String,

    /// The bot's Microsoft App ID: the token's audience and the recipient `28:<id>`.
    #[arg(long, value_name = "ID")]
    pub app_id: String,

    /// The activity type to send (ignored with --activity-file).
    #[arg(
        long = "type",
        value_enum,
        default_value = "message",
        value_name = "TYPE"
    )]
    pub kind: ActivityKind,

    /// Message text (for `invoke`: the card action's data.text).
    #[arg(long, default_value = "Hello from botfleet-sim")]
    pub text: String,

    /// Conversation id: `a:...` is a personal chat, `19:...@thread.tacv2` a team
    /// channel, another `19:...` a group chat.
    #[arg(long, default_value = "a:1botfleet-sim-send", value_name = "ID")]
    pub conversation: String,

    /// Tenant id of the conversation (channelData.tenant.id and conversation.tenantId).
    #[arg(
        long,
        default_value = "00000000-0000-4000-8000-000000000001",
        value_name = "ID"
    )]
    pub tenant: String,

    /// The activity's serviceUrl, where the bot sends its reply [default: {sim}/amer/].
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,

    /// Send the activity in this JSON file instead of a generated one. Its serviceUrl
    /// is replaced by --service-url (so the reply reaches the sim, not Microsoft)
    /// unless --keep-service-url is given; its conversation is registered with the sim.
    #[arg(long, value_name = "FILE")]
    pub activity_file: Option<PathBuf>,

    /// With --activity-file: send its serviceUrl unchanged (the token still carries it).
    #[arg(long, requires = "activity_file")]
    pub keep_service_url: bool,

    /// Tampering: a token that expired an hour ago (beyond the 5-minute clock skew).
    #[arg(long)]
    pub expired: bool,

    /// Tampering: this `iss` instead of https://api.botframework.com.
    #[arg(long, value_name = "ISS")]
    pub issuer: Option<String>,

    /// Tampering: this `aud` instead of the app id.
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,

    /// Tampering: this `serviceurl` claim instead of the activity's serviceUrl.
    #[arg(long, value_name = "URL")]
    pub token_service_url: Option<String>,

    /// Tampering: sign with a key the sim did not endorse for msteams, or one it
    /// never published.
    #[arg(long, value_enum, value_name = "KEY")]
    pub key: Option<TokenKey>,

    /// Send no Authorization header at all.
    #[arg(long, conflicts_with_all = ["expired", "issuer", "audience", "token_service_url", "key"])]
    pub no_token: bool,

    /// Give up on the bot after this long (e.g. 10s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Runs `botfleet-sim send`. The bot's answer is printed on stdout before an
/// `Err(BotRejected)` is returned for a non-2xx answer.
pub async fn run(args: SendArgs) -> Result<(), ClientError> {
    let to = super::parse_http_url("--to", &args.to)?;
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()
        .map_err(ClientError::HttpClient)?;
    let sim = SimApi::new(&args.sim, http.clone())?;
    let service_url = match &args.service_url {
        Some(url) => {
            super::parse_http_url("--service-url", url)?;
            url.clone()
        }
        None => super::default_service_url(&args.sim),
    };

    let (activity, registration) = match &args.activity_file {
        Some(path) => activity_from_file(path, &service_url, args.keep_service_url)?,
        None => generated_activity(&args, &service_url),
    };
    // The token's serviceurl claim must equal the activity's serviceUrl (unless a
    // test tampers with it), so take it from the activity as sent.
    let activity_service_url = activity
        .get("serviceUrl")
        .and_then(Value::as_str)
        .unwrap_or(&service_url)
        .to_owned();

    if let Some(registration) = registration {
        sim.register_conversations(&[registration]).await?;
    }

    let token = if args.no_token {
        None
    } else {
        let request = TokenRequest {
            app_id: args.app_id.clone(),
            service_url: activity_service_url,
            count: 1,
            expired_by_secs: args.expired.then_some(3600),
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            token_service_url: args.token_service_url.clone(),
            key: args.key.map(|k| k.wire_name().to_owned()),
        };
        sim.tokens(&request).await?.into_iter().next()
    };

    let body = serde_json::to_vec(&activity).map_err(|e| ClientError::Usage(e.to_string()))?;
    let mut request = http
        .post(to.clone())
        .header("content-type", "application/json; charset=utf-8")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let bot_unreachable = |source| ClientError::BotUnreachable {
        url: to.to_string(),
        source,
    };
    let response = request.send().await.map_err(bot_unreachable)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(bot_unreachable)?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    let line = json!({
        "status": status,
        "body": body,
        "activityId": activity.get("id"),
        "conversationId": activity.pointer("/conversation/id"),
    });
    println!("{line}");
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ClientError::BotRejected { status })
    }
}

/// The activity `--type` asks for, and its conversation for the sim.
fn generated_activity(
    args: &SendArgs,
    service_url: &str,
) -> (Value, Option<ConversationRegistration>) {
    let conversation = ConversationSpec::new(&args.conversation, &args.tenant, 0);
    let now_ms = crate::time::now_ms();
    // Teams ids for user messages are the millisecond timestamp; unique enough for
    // one-off sends, and what a bot stores as replyToId.
    let activity_id = now_ms.to_string();
    let timestamp = crate::time::rfc3339(now_ms);
    let activity = build_activity(&ActivityParams {
        kind: args.kind,
        app_id: &args.app_id,
        service_url,
        conversation: &conversation,
        text: &args.text,
        activity_id: &activity_id,
        timestamp: &timestamp,
    });
    let registration = ConversationRegistration {
        id: conversation.id.clone(),
        tenant_id: conversation.tenant_id.clone(),
        members: vec![Member {
            id: conversation.user_id.clone(),
        }],
    };
    (activity, Some(registration))
}

/// The activity in `path`, pointed at `service_url` unless `keep` is set, and
/// its conversation (if it names one) for the sim.
fn activity_from_file(
    path: &std::path::Path,
    service_url: &str,
    keep: bool,
) -> Result<(Value, Option<ConversationRegistration>), ClientError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::ActivityFile {
        path: shown.clone(),
        source,
    })?;
    let mut activity: Value =
        serde_json::from_str(&text).map_err(|e| ClientError::ActivityFileJson {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let Some(object) = activity.as_object_mut() else {
        return Err(ClientError::ActivityFileJson {
            path: shown,
            reason: "the top level is not an object".to_owned(),
        });
    };
    if !keep {
        object.insert(
            "serviceUrl".to_owned(),
            Value::String(service_url.to_owned()),
        );
    }
    Ok((activity.clone(), registration_of(&activity)))
}

/// The conversation of a (possibly hand-written) activity, as the sim needs it;
/// `None` when it has no conversation id to register.
fn registration_of(activity: &Value) -> Option<ConversationRegistration> {
    let id = activity.pointer("/conversation/id")?.as_str()?.to_owned();
    // Same rule as botfleet_protocol::Activity::tenant_id: channelData first.
    let tenant_id = activity
        .pointer("/channelData/tenant/id")
        .or_else(|| activity.pointer("/conversation/tenantId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let members = activity
        .pointer("/from/id")
        .and_then(Value::as_str)
        .map(|id| vec![Member { id: id.to_owned() }])
        .unwrap_or_default();
    Some(ConversationRegistration {
        id,
        tenant_id,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    fn parse(extra: &[&str]) -> Result<SendArgs, clap::Error> {
        let mut argv = vec![
            "send",
            "--to",
            "http://127.0.0.1:3978/api/messages",
            "--sim",
            "http://127.0.0.1:4100",
            "--app-id",
            "app",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.send)
    }

    #[test]
    fn parses_types_and_tampering_flags() {
        let args = parse(&[
            "--type",
            "installationUpdate-remove",
            "--expired",
            "--key",
            "foreign",
        ])
        .unwrap();
        assert_eq!(args.kind, ActivityKind::InstallationUpdateRemove);
        assert!(args.expired);
        assert_eq!(args.key, Some(TokenKey::Foreign));
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert!(parse(&["--no-token", "--expired"]).is_err());
        assert!(parse(&["--keep-service-url"]).is_err());
        assert!(parse(&["--type", "typing"]).is_err());
    }

    #[test]
    fn generated_activity_registers_its_conversation() {
        let args = parse(&["--conversation", "19:abc@thread.tacv2", "--tenant", "t1"]).unwrap();
        let (activity, registration) = generated_activity(&args, "http://127.0.0.1:4100/amer/");
        let registration = registration.unwrap();
        assert_eq!(registration.id, "19:abc@thread.tacv2");
        assert_eq!(registration.tenant_id, "t1");
        assert_eq!(activity["serviceUrl"], "http://127.0.0.1:4100/amer/");
        assert_eq!(activity["recipient"]["id"], "28:app");
        assert_eq!(activity["conversation"]["conversationType"], "channel");
    }

    #[test]
    fn activity_file_is_pointed_at_the_sim() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/tests/fixtures/personal_message.json"
        );
        let path = std::path::Path::new(fixture);
        let (activity, registration) =
            activity_from_file(path, "http://127.0.0.1:4100/amer/", false).unwrap();
        assert_eq!(activity["serviceUrl"], "http://127.0.0.1:4100/amer/");
        let registration = registration.unwrap();
        assert_eq!(
            registration.tenant_id,
            "72f988bf-86f1-41af-91ab-2d7cd011db47"
        );
        assert!(registration.id.starts_with("a:1RHhD3AN"));
        assert!(registration.members[0].id.starts_with("29:"));

        let (kept, _) = activity_from_file(path, "http://127.0.0.1:4100/amer/", true).unwrap();
        assert_eq!(kept["serviceUrl"], "https://smba.trafficmanager.net/emea/");

        let err =
            activity_from_file(std::path::Path::new("/nonexistent.json"), "x", false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.json"));
    }
}
