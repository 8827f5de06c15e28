//! The activities the client sends, shaped like the ones Teams sends (compare
//! `crates/protocol/tests/fixtures`), and the activity mix of `load`.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

/// An activity Teams sends to a bot, as `send --type` and `load --mix` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ActivityKind {
    /// A user's message (in a channel: with an @mention of the bot).
    #[value(name = "message")]
    Message,
    /// The bot was added to the conversation (personal chat, or a team).
    #[value(name = "conversationUpdate-bot-added")]
    ConversationUpdateBotAdded,
    /// The bot was removed from the conversation.
    #[value(name = "conversationUpdate-bot-removed")]
    ConversationUpdateBotRemoved,
    /// The app was installed.
    #[value(name = "installationUpdate-add")]
    InstallationUpdateAdd,
    /// The app was uninstalled.
    #[value(name = "installationUpdate-remove")]
    InstallationUpdateRemove,
    /// An adaptive card `Action.Execute` (`adaptiveCard/action` invoke); the bot
    /// must answer with an invoke response.
    #[value(name = "invoke")]
    Invoke,
    /// A user reacted (`like`) to one of the bot's messages.
    #[value(name = "messageReaction")]
    MessageReaction,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 7] = [
        ActivityKind::Message,
        ActivityKind::ConversationUpdateBotAdded,
        ActivityKind::ConversationUpdateBotRemoved,
        ActivityKind::InstallationUpdateAdd,
        ActivityKind::InstallationUpdateRemove,
        ActivityKind::Invoke,
        ActivityKind::MessageReaction,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ActivityKind::Message => "message",
            ActivityKind::ConversationUpdateBotAdded => "conversationUpdate-bot-added",
            ActivityKind::ConversationUpdateBotRemoved => "conversationUpdate-bot-removed",
            ActivityKind::InstallationUpdateAdd => "installationUpdate-add",
            ActivityKind::InstallationUpdateRemove => "installationUpdate-remove",
            ActivityKind::Invoke => "invoke",
            ActivityKind::MessageReaction => "messageReaction",
        }
    }

    /// Parses a command-line name, case-insensitively; `conversationUpdate` and
    /// `installationUpdate` alone mean the bot-added / add variants.
    pub fn parse(name: &str) -> Option<ActivityKind> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "conversationupdate" => return Some(ActivityKind::ConversationUpdateBotAdded),
            "installationupdate" => return Some(ActivityKind::InstallationUpdateAdd),
            _ => {}
        }
        ActivityKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(&lower))
    }
}

impl fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A conversation the client talks in: id, tenant and the user who talks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSpec {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub user_aad_object_id: String,
    pub user_name: String,
}

impl ConversationSpec {
    /// A conversation with one user, `n` only serving to make the user distinct.
    pub fn new(id: impl Into<String>, tenant_id: impl Into<String>, n: usize) -> Self {
        Self {
            id: id.into(),
            tenant_id: tenant_id.into(),
            user_id: format!("29:1botfleet-sim-user-{n:06}"),
            user_aad_object_id: format!("00000000-0000-4000-9000-{n:012}"),
            user_name: format!("Sim User {n}"),
        }
    }

    /// Conversation `i` of a load run over `tenants` tenants: every fifth one is a
    /// team channel, the others personal chats (most bot traffic is 1:1).
    pub fn for_load(i: usize, tenants: usize) -> Self {
        let tenant = load_tenant_id(i % tenants.max(1));
        let id = if i % 5 == 4 {
            format!("19:botfleetsimload{i:06}@thread.tacv2")
        } else {
            format!("a:1botfleet-sim-load-{i:06}")
        };
        Self::new(id, tenant, i)
    }

    /// `personal`, `channel` or `groupChat`, from the shape of the id as Teams makes
    /// them: `a:` personal, `19:...@thread.tacv2` channel, other `19:` group chat.
    pub fn conversation_type(&self) -> &'static str {
        if self.id.starts_with("19:") {
            if self.id.contains("@thread.tacv2") || self.id.contains("@thread.skype") {
                "channel"
            } else {
                "groupChat"
            }
        } else {
            "personal"
        }
    }
}

/// The tenant id of tenant number `t` in a load run.
pub fn load_tenant_id(t: usize) -> String {
    format!("00000000-0000-4000-8000-{t:012}")
}

/// What varies between the activities [`build_activity`] makes.
pub struct ActivityParams<'a> {
    pub kind: ActivityKind,
    pub app_id: &'a str,
    pub service_url: &'a str,
    pub conversation: &'a ConversationSpec,
    /// Message text; for an invoke, the card's `data.text`.
    pub text: &'a str,
    pub activity_id: &'a str,
    /// RFC 3339 UTC, e.g. `2026-11-23T10:33:42.3791234Z`.
    pub timestamp: &'a str,
}

/// An activity as Teams sends it: same fields, same nesting, same id shapes.
pub fn build_activity(p: &ActivityParams<'_>) -> Value {
    let c = p.conversation;
    let conversation_type = c.conversation_type();
    let is_channel = conversation_type == "channel";
    let bot_id = format!("28:{}", p.app_id);
    let bot = json!({"id": bot_id, "name": "Bot"});
    let mut conversation = json!({
        "conversationType": conversation_type,
        "tenantId": c.tenant_id,
        "id": c.id,
    });
    if conversation_type != "personal" {
        conversation["isGroup"] = json!(true);
    }
    let mut channel_data = json!({"tenant": {"id": c.tenant_id}});
    if is_channel {
        // A team's General channel has the team's id; that is what the sim sends.
        let team_id = c.id.split(';').next().unwrap_or(&c.id);
        channel_data["team"] = json!({"id": team_id, "name": "Sim Team"});
        channel_data["channel"] = json!({"id": team_id, "name": "General"});
    }
    let from = json!({
        "id": c.user_id,
        "name": c.user_name,
        "aadObjectId": c.user_aad_object_id,
    });
    let client_info = json!({
        "locale": "en-US", "country": "US", "platform": "Web",
        "timezone": "Europe/Berlin", "type": "clientInfo",
    });

    let mut activity = json!({
        "id": p.activity_id,
        "timestamp": p.timestamp,
        "channelId": "msteams",
        "serviceUrl": p.service_url,
        "from": from,
        "conversation": conversation,
        "recipient": bot,
        "locale": "en-US",
    });
    let fields: Value = match p.kind {
        ActivityKind::Message => {
            if is_channel {
                // Teams puts the @mention of the bot in the text and in entities.
                let text = format!("<at>Bot</at> {}", p.text);
                json!({
                    "type": "message",
                    "text": text,
                    "textFormat": "plain",
                    "attachments": [{"contentType": "text/html", "content": format!("<p>{text}</p>")}],
                    "entities": [
                        {"type": "mention", "text": "<at>Bot</at>", "mentioned": {"id": bot_id, "name": "Bot"}},
                        client_info,
                    ],
                    "localTimezone": "Europe/Berlin",
                })
            } else {
                json!({
                    "type": "message",
                    "text": p.text,
                    "textFormat": "plain",
                    "entities": [client_info],
                    "localTimezone": "Europe/Berlin",
                })
            }
        }
        ActivityKind::ConversationUpdateBotAdded | ActivityKind::ConversationUpdateBotRemoved => {
            let added = p.kind == ActivityKind::ConversationUpdateBotAdded;
            let members = json!([{"id": bot_id}]);
            if is_channel {
                channel_data["eventType"] = json!(if added {
                    "teamMemberAdded"
                } else {
                    "teamMemberRemoved"
                });
            }
            if added {
                json!({"type": "conversationUpdate", "membersAdded": members})
            } else {
                json!({"type": "conversationUpdate", "membersRemoved": members})
            }
        }
        ActivityKind::InstallationUpdateAdd | ActivityKind::InstallationUpdateRemove => {
            channel_data["source"] = json!({"name": "message"});
            channel_data["settings"] = json!({"source": {"name": "message"}});
            let action = if p.kind == ActivityKind::InstallationUpdateAdd {
                "add"
            } else {
                "remove"
            };
            json!({"type": "installationUpdate", "action": action, "entities": [client_info]})
        }
        ActivityKind::Invoke => json!({
            "type": "invoke",
            "name": "adaptiveCard/action",
            "replyToId": "1763894022379",
            "value": {
                "action": {"type": "Action.Execute", "verb": "echo", "data": {"text": p.text}},
                "trigger": "manual",
            },
            "entities": [client_info],
            "localTimezone": "Europe/Berlin",
        }),
        ActivityKind::MessageReaction => json!({
            "type": "messageReaction",
            "reactionsAdded": [{"type": "like"}],
            "replyToId": "1763894022379",
        }),
    };
    if let (Some(target), Value::Object(extra)) = (activity.as_object_mut(), fields) {
        target.extend(extra);
        target.insert("channelData".to_owned(), channel_data);
    }
    activity
}

/// The activity kinds of a load run and their relative weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    entries: Vec<(ActivityKind, u32)>,
}

impl Default for Mix {
    /// Mostly messages, like a real bot's traffic, plus the events and card actions
    /// every Teams bot must handle. Removals are left out: they would take the bot
    /// out of the conversations the rest of the run talks in.
    fn default() -> Self {
        Mix {
            entries: vec![
                (ActivityKind::Message, 85),
                (ActivityKind::Invoke, 5),
                (ActivityKind::MessageReaction, 5),
                (ActivityKind::ConversationUpdateBotAdded, 3),
                (ActivityKind::InstallationUpdateAdd, 2),
            ],
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `message=90,invoke=10` (weights are relative), or `message` alone.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((n, w)) => {
                    let weight = w.trim().parse::<u32>().map_err(|_| {
                        format!(
                            "--mix: weight `{}` of `{}` is not a whole number",
                            w.trim(),
                            n.trim()
                        )
                    })?;
                    (n, weight)
                }
                None => (part, 1),
            };
            let kind = ActivityKind::parse(name).ok_or_else(|| {
                let names: Vec<&str> = ActivityKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "--mix: unknown activity type `{}`; use {} (or conversationUpdate, installationUpdate)",
                    name.trim(),
                    names.join(", ")
                )
            })?;
            if !seen.insert(kind) {
                return Err(format!("--mix: `{kind}` is listed twice"));
            }
            if weight > 0 {
                entries.push((kind, weight));
            }
        }
        if entries.is_empty() {
            return Err("--mix: give at least one activity type with a weight above 0, e.g. message=90,invoke=10".to_owned());
        }
        Ok(Mix { entries })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, weight)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{kind}={weight}")?;
        }
        Ok(())
    }
}

impl Mix {
    /// The sum of the weights: the length of one cycle of [`Mix::cycle`].
    pub fn total_weight(&self) -> u64 {
        self.entries.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    /// One cycle of kinds in which each kind appears exactly `weight` times,
    /// spread evenly (smooth weighted round-robin), so any window of the run has
    /// about the right proportions, not 85 messages and then all the events.
    pub fn cycle(&self) -> Vec<ActivityKind> {
        let total = i64::try_from(self.total_weight()).unwrap_or(i64::MAX);
        let mut current = vec![0i64; self.entries.len()];
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for (i, (_, weight)) in self.entries.iter().enumerate() {
                current[i] += i64::from(*weight);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            out.push(self.entries[best].0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use botfleet_protocol::Activity;

    fn params<'a>(kind: ActivityKind, c: &'a ConversationSpec) -> ActivityParams<'a> {
        ActivityParams {
            kind,
            app_id: "00000000-0000-0000-0000-00000000b0b0",
            service_url: "http://127.0.0.1:4100/amer/",
            conversation: c,
            text: "hello",
            activity_id: "1763894022379",
            timestamp: "2026-11-23T10:33:42.3791234Z",
        }
    }

    #[test]
    fn every_kind_parses_as_a_well_formed_teams_activity() {
        for c in [
            ConversationSpec::for_load(0, 10),
            ConversationSpec::for_load(4, 10),
        ] {
            for kind in ActivityKind::ALL {
                let value = build_activity(&params(kind, &c));
                let activity: Activity = serde_json::from_value(value.clone()).unwrap();
                activity.check_inbound_shape().unwrap();
                assert_eq!(activity.tenant_id(), Some(c.tenant_id.as_str()));
                assert_eq!(activity.conversation_id(), Some(c.id.as_str()));
                // Nothing lands in `extra`: every field is one Teams really sends.
                assert!(activity.extra.is_empty(), "{kind}: {:?}", activity.extra);
                match kind {
                    ActivityKind::ConversationUpdateBotAdded => assert!(activity.adds_bot()),
                    ActivityKind::ConversationUpdateBotRemoved => {
                        assert!(activity.removes_bot())
                    }
                    ActivityKind::InstallationUpdateRemove => {
                        assert!(activity.ends_bot_membership())
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn channel_messages_mention_the_bot() {
        let c = ConversationSpec::for_load(4, 10);
        assert_eq!(c.conversation_type(), "channel");
        let activity: Activity =
            serde_json::from_value(build_activity(&params(ActivityKind::Message, &c))).unwrap();
        let mentions = activity.mentions();
        assert_eq!(mentions.len(), 1);
        assert_eq!(activity.text.as_deref(), Some("<at>Bot</at> hello"));
    }

    #[test]
    fn conversation_types_follow_teams_id_shapes() {
        let t = "t";
        assert_eq!(
            ConversationSpec::new("a:1x", t, 0).conversation_type(),
            "personal"
        );
        assert_eq!(
            ConversationSpec::new("19:x@thread.tacv2", t, 0).conversation_type(),
            "channel"
        );
        assert_eq!(
            ConversationSpec::new("19:x@thread.v2", t, 0).conversation_type(),
            "groupChat"
        );
        assert_eq!(
            ConversationSpec::for_load(13, 10).tenant_id,
            load_tenant_id(3)
        );
    }

    #[test]
    fn kinds_parse_by_name_and_alias() {
        for kind in ActivityKind::ALL {
            assert_eq!(ActivityKind::parse(kind.name()), Some(kind));
            assert_eq!(ActivityKind::parse(&kind.name().to_uppercase()), Some(kind));
        }
        assert_eq!(
            ActivityKind::parse("conversationUpdate"),
            Some(ActivityKind::ConversationUpdateBotAdded)
        );
        assert_eq!(ActivityKind::parse("typing"), None);
    }

    #[test]
    fn mix_parsing() {
        let mix: Mix = "message=90, invoke=10".parse().unwrap();
        assert_eq!(mix.to_string(), "message=90,invoke=10");
        assert_eq!(mix.total_weight(), 100);
        let single: Mix = "message".parse().unwrap();
        assert_eq!(single.cycle(), vec![ActivityKind::Message]);
        let zero_dropped: Mix = "message=1,invoke=0".parse().unwrap();
        assert_eq!(zero_dropped.to_string(), "message=1");

        assert!("".parse::<Mix>().is_err());
        assert!("message=0".parse::<Mix>().is_err());
        assert!("message=x".parse::<Mix>().is_err());
        assert!("message=-1".parse::<Mix>().is_err());
        assert!("typing=3"
            .parse::<Mix>()
            .unwrap_err()
            .contains("unknown activity type"));
        assert!("message=1,Message=2"
            .parse::<Mix>()
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn mix_cycle_has_exact_proportions_spread_out() {
        let mix = Mix::default();
        assert_eq!(mix.total_weight(), 100);
        let cycle = mix.cycle();
        assert_eq!(cycle.len(), 100);
        for (kind, weight) in &mix.entries {
            let n = cycle.iter().filter(|k| *k == kind).count();
            assert_eq!(n, *weight as usize, "{kind}");
        }
        // Evenly spread: the 5 invokes are not bunched together.
        let first_half = cycle[..50]
            .iter()
            .filter(|k| **k == ActivityKind::Invoke)
            .count();
        assert!((2..=3).contains(&first_half), "{first_half}");
        // The default must be parseable from its own text.
        assert_eq!(mix.to_string().parse::<Mix>().unwrap(), mix);
    }
}
