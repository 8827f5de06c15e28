//! Realistic Teams payloads parse, expose what botfleet routes on, and serialise
//! back to the same JSON (nothing lost when an activity is forwarded).

use botfleet_protocol::{
    Activity, ActivityType, ConversationParameters, ConversationReference,
    ConversationResourceResponse, ErrorResponse, InvokeResponse, ResourceResponse,
};
use serde_json::{json, Value};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const BOT: &str = "28:00000000-0000-0000-0000-00000000b0b0";

fn fixture(name: &str) -> (Value, Activity) {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let value: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let activity: Activity = serde_json::from_str(&text).expect("fixture parses as an Activity");
    (value, activity)
}

fn assert_round_trip(name: &str) -> Activity {
    let (original, activity) = fixture(name);
    let back = serde_json::to_value(&activity).expect("serialises");
    assert_eq!(back, original, "{name} did not round-trip");
    activity
        .check_inbound_shape()
        .expect("fixture is a complete inbound activity");
    activity
}

#[test]
fn personal_message() {
    let a = assert_round_trip("personal_message");
    assert_eq!(a.activity_type(), ActivityType::Message);
    assert_eq!(a.tenant_id(), Some(TENANT));
    let conv = a.conversation.as_ref().expect("conversation");
    assert_eq!(conv.conversation_type.as_deref(), Some("personal"));
    assert_eq!(conv.is_group, None);
    // unknown attachment content survives
    assert_eq!(
        a.attachments.as_ref().expect("attachments")[0].content,
        Some(json!("<div>Hello bot</div>"))
    );
}

#[test]
fn channel_message_with_mention() {
    let a = assert_round_trip("channel_mention");
    let mentions = a.mentions();
    assert_eq!(mentions.len(), 1);
    assert_eq!(mentions[0].mentioned.id, BOT);
    assert_eq!(mentions[0].text, "<at>Build Bot</at>");
    let cd = a.teams_channel_data().expect("teams channel data");
    assert_eq!(
        cd.channel.expect("channel").id,
        "19:b5a3f3bb6d2a4e0fa39bd3a4bb9a3e0e@thread.tacv2"
    );
    // fields botfleet does not model are kept in channelData
    assert!(cd.extra.contains_key("teamsTeamId"));
    assert_eq!(a.conversation.as_ref().and_then(|c| c.is_group), Some(true));
}

#[test]
fn conversation_update_bot_added_and_removed() {
    let added = assert_round_trip("conversation_update_bot_added");
    assert!(added.adds_bot());
    assert!(!added.ends_bot_membership());
    let cd = added.teams_channel_data().expect("teams channel data");
    assert_eq!(cd.event_type.as_deref(), Some("teamMemberAdded"));
    assert_eq!(
        cd.team.as_ref().and_then(|t| t.name.as_deref()),
        Some("Platform")
    );
    assert!(cd
        .settings
        .and_then(|s| s.selected_channel)
        .is_some_and(|c| c.id.ends_with("@thread.tacv2")));

    let removed = assert_round_trip("conversation_update_bot_removed");
    assert!(removed.removes_bot());
    assert!(removed.ends_bot_membership());
}

#[test]
fn installation_update_add_and_remove() {
    let add = assert_round_trip("installation_update_add");
    assert_eq!(add.activity_type(), ActivityType::InstallationUpdate);
    assert!(!add.ends_bot_membership());
    let remove = assert_round_trip("installation_update_remove");
    assert_eq!(remove.action.as_deref(), Some("remove"));
    assert!(remove.ends_bot_membership());

    let mut upgrade = remove.clone();
    upgrade.action = Some("remove-upgrade".into());
    assert!(
        !upgrade.ends_bot_membership(),
        "an upgrade keeps the bot installed"
    );
}

#[test]
fn invoke_adaptive_card_action() {
    let a = assert_round_trip("invoke_adaptive_card_action");
    assert_eq!(a.activity_type(), ActivityType::Invoke);
    assert_eq!(a.name.as_deref(), Some("adaptiveCard/action"));
    assert_eq!(
        a.value.as_ref().and_then(|v| v.pointer("/action/verb")),
        Some(&json!("approve"))
    );
    // numbers keep their exact value
    assert_eq!(
        a.value
            .as_ref()
            .and_then(|v| v.pointer("/action/data/amount")),
        Some(&json!(129.5))
    );
}

#[test]
fn message_reaction() {
    let a = assert_round_trip("message_reaction");
    assert_eq!(a.activity_type(), ActivityType::MessageReaction);
    assert_eq!(
        a.reactions_added.as_ref().expect("reactions")[0].kind,
        "like"
    );
}

#[test]
fn unknown_top_level_fields_survive() {
    let (mut value, _) = fixture("personal_message");
    value["futureField"] = json!({"nested": [1, 2, 3]});
    value["type"] = json!("someNewEventType");
    let a: Activity = serde_json::from_value(value.clone()).expect("parses");
    assert_eq!(a.activity_type(), ActivityType::Other);
    assert_eq!(serde_json::to_value(&a).expect("serialises"), value);
}

#[test]
fn tenant_id_falls_back_to_conversation() {
    let (_, mut a) = fixture("personal_message");
    a.channel_data = Some(json!({}));
    assert_eq!(a.tenant_id(), Some(TENANT));
    a.conversation.as_mut().expect("conversation").tenant_id = None;
    assert_eq!(a.tenant_id(), None);
    a.channel_data = Some(json!({"tenant": {"id": "other"}}));
    assert_eq!(a.tenant_id(), Some("other"));
}

#[test]
fn conversation_reference_and_reply() {
    let (_, mut a) = fixture("personal_message");
    // Teams puts the tenant in channelData only, sometimes; the reference keeps it
    a.conversation.as_mut().expect("conversation").tenant_id = None;
    let r: ConversationReference = a.conversation_reference().expect("reference");
    assert_eq!(r.service_url, "https://smba.trafficmanager.net/emea/");
    assert_eq!(r.channel_id, "msteams");
    assert_eq!(r.bot.as_ref().map(|b| b.id.as_str()), Some(BOT));
    assert_eq!(
        r.user.as_ref().map(|u| u.name.as_deref()),
        Some(Some("Megan Bowen"))
    );
    assert_eq!(r.tenant_id(), Some(TENANT));
    assert_eq!(r.locale.as_deref(), Some("en-US"));
    let json = serde_json::to_value(&r).expect("serialises");
    assert_eq!(json["serviceUrl"], "https://smba.trafficmanager.net/emea/");
    assert_eq!(json["conversation"]["tenantId"], TENANT);

    let reply = a.reply("Echo: Hello bot");
    assert_eq!(reply.kind, "message");
    assert_eq!(reply.reply_to_id.as_deref(), Some("1763894022379"));
    assert_eq!(reply.from.as_ref().map(|f| f.id.as_str()), Some(BOT));
    assert_eq!(reply.recipient, a.from);
    assert_eq!(
        reply.conversation.as_ref().map(|c| c.id.as_str()),
        a.conversation_id()
    );

    let proactive = r.address(Activity::message("build failed"));
    assert_eq!(proactive.from.as_ref().map(|f| f.id.as_str()), Some(BOT));
    assert_eq!(
        proactive.service_url.as_deref(),
        Some(r.service_url.as_str())
    );
}

#[test]
fn inbound_shape_names_the_missing_field() {
    let (_, a) = fixture("personal_message");
    let mut no_service_url = a.clone();
    no_service_url.service_url = None;
    assert_eq!(
        no_service_url
            .check_inbound_shape()
            .expect_err("rejected")
            .field,
        "serviceUrl"
    );
    let mut blank_conv = a.clone();
    blank_conv.conversation.as_mut().expect("conversation").id = "  ".into();
    assert_eq!(
        blank_conv
            .check_inbound_shape()
            .expect_err("rejected")
            .field,
        "conversation.id"
    );
    let mut no_recipient = a;
    no_recipient.recipient = None;
    assert_eq!(
        no_recipient
            .check_inbound_shape()
            .expect_err("rejected")
            .field,
        "recipient.id"
    );
    // a body without `type` is not an activity at all
    assert!(serde_json::from_value::<Activity>(json!({"text": "hi"})).is_err());
}

#[test]
fn connector_bodies() {
    let params: ConversationParameters = serde_json::from_value(json!({
        "isGroup": false,
        "members": [{"id": "29:abc"}],
        "tenantId": TENANT
    }))
    .expect("parses");
    assert_eq!(params.members.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        serde_json::to_value(&params).expect("serialises"),
        json!({"isGroup": false, "members": [{"id": "29:abc"}], "tenantId": TENANT})
    );
    let created: ConversationResourceResponse =
        serde_json::from_value(json!({"id": "a:xyz", "activityId": "1"})).expect("parses");
    assert_eq!(created.activity_id.as_deref(), Some("1"));
    let rr: ResourceResponse = serde_json::from_value(json!({"id": "42"})).expect("parses");
    assert_eq!(rr.id, "42");
    let err: ErrorResponse = serde_json::from_value(json!({
        "error": {"code": "BotNotInConversationRoster", "message": "The bot is not part of the conversation roster."}
    }))
    .expect("parses");
    assert_eq!(err.error.code, "BotNotInConversationRoster");
    let invoke = InvokeResponse::ok(Some(json!({"statusCode": 200})));
    assert_eq!(
        serde_json::to_value(invoke).expect("serialises"),
        json!({"status": 200, "body": {"statusCode": 200}})
    );
}
