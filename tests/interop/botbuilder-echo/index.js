'use strict';
// Interop proof: an echo bot built on Microsoft's own SDK (botbuilder-js 4.23,
// CloudAdapter, authentication ON), set up the way Microsoft's samples do it,
// with every Bot Framework endpoint pointed at a running botfleet-sim. If this
// bot accepts the sim's tokens, rejects forged/expired ones and its replies
// reach the sim's Bot Connector, the sim speaks the real protocol.
//
// Used by crates/sim/tests/interop_botbuilder.rs and as the target of
// `botfleet-sim load` benchmarks. Dependencies: `scripts/node-deps`.
//
// env: SIM_URL (required): base URL of botfleet-sim, e.g. http://127.0.0.1:4100
//      APP_ID, APP_PASSWORD: the bot registered in the sim (`serve --bot APP_ID:SECRET`)
//      PORT (0 = any free port), HOST (127.0.0.1), BOT_PATH (/api/messages)
//      SEED_CONNECTOR_TOKEN=0 to skip the token-cache seeding (shows why it is needed)
// On start it prints one JSON line {"ready":true,"url":...,"port":...} on stdout.

const { ActivityHandler, CloudAdapter, ConfigurationBotFrameworkAuthentication, ConfigurationServiceClientCredentialFactory, MessageFactory } = require('botbuilder');
const { AppCredentials } = require('botframework-connector');

const env = process.env;
if (!env.SIM_URL) {
  console.error('SIM_URL is required: the base URL botfleet-sim printed in its ready line');
  process.exit(2);
}
const sim = env.SIM_URL.replace(/\/+$/, '');
const appId = env.APP_ID || env.MicrosoftAppId;
const appPassword = env.APP_PASSWORD || env.MicrosoftAppPassword;
if (!appId || !appPassword) {
  console.error('APP_ID and APP_PASSWORD are required (the --bot APP_ID:SECRET given to botfleet-sim serve)');
  process.exit(2);
}

// Every key ConfigurationBotFrameworkAuthentication reads. As soon as one of the
// ToBot*/ToChannel*/OAuthUrl/CallerId keys is set, BotFrameworkAuthenticationFactory
// uses all of them as given, with no public-cloud defaults for the rest, so every
// one is set, and every URL points at the sim: nothing here can reach Microsoft.
const config = {
  MicrosoftAppId: appId,
  MicrosoftAppPassword: appPassword,
  MicrosoftAppType: 'MultiTenant',
  MicrosoftAppTenantId: '',
  // inbound: channel -> bot token validation (OpenID metadata -> JWKS of the sim)
  ToBotFromChannelOpenIdMetadataUrl: `${sim}/v1/.well-known/openidconfiguration`,
  ToBotFromChannelTokenIssuer: 'https://api.botframework.com',
  // only used for emulator-issued (Entra) tokens; the sim's metadata keeps it offline
  ToBotFromEmulatorOpenIdMetadataUrl: `${sim}/v1/.well-known/openidconfiguration`,
  // outbound: bot -> connector token acquisition ({login url}/oauth2/v2.0/token)
  ToChannelFromBotLoginUrl: `${sim}/botframework.com`,
  ToChannelFromBotOAuthScope: 'https://api.botframework.com',
  ValidateAuthority: 'false',
  // user-token service; an echo bot never calls it
  OAuthUrl: sim,
  CallerId: 'urn:botframework:azure',
};

const credentialsFactory = new ConfigurationServiceClientCredentialFactory(config);
const auth = new ConfigurationBotFrameworkAuthentication(config, credentialsFactory);
const adapter = new CloudAdapter(auth);

adapter.onTurnError = async (context, error) => {
  // botbuilder still answers 200 after this; the test checks the reply at the
  // sim's connector, so a failed reply is seen there, and logged here.
  console.error(`[onTurnError] ${error && error.stack ? error.stack : error}`);
};

class EchoBot extends ActivityHandler {
  constructor() {
    super();
    this.onMessage(async (context, next) => {
      const replyText = `Echo: ${context.activity.text}`;
      await context.sendActivity(MessageFactory.text(replyText, replyText));
      await next();
    });
  }

  // Adaptive card Action.Execute: without this ActivityHandler answers 501, and
  // a Teams bot that puts cards in front of users implements it.
  async onAdaptiveCardInvoke(context, invokeValue) {
    const verb = invokeValue && invokeValue.action ? invokeValue.action.verb : undefined;
    return { statusCode: 200, type: 'application/vnd.microsoft.activity.message', value: `Echo: ${verb}` };
  }
}
const bot = new EchoBot();

// Outbound token. botbuilder 4.23 gets bot->connector tokens through MSAL
// (@azure/msal-node), which (a) refuses an http:// authority
// (authority_uri_insecure) and (b) for an https authority on a host it does not
// know first calls Microsoft's instance-discovery endpoint on
// login.microsoftonline.com; no botbuilder config key reaches MSAL's
// knownAuthorities. So the token is fetched here from the sim's token endpoint
// (the same client-credentials request MSAL makes) and put in
// AppCredentials.cache, the process-wide cache every AppCredentials.getToken()
// reads first (key `${appId}${scope}-cache`). Everything on the per-request path
// is unchanged: each reply builds its credentials, ConnectorClient and MSAL
// client object and reads this cache, as a production bot does between refreshes.
const tokenCacheKey = `${appId}${config.ToChannelFromBotOAuthScope}-cache`;
async function seedConnectorToken() {
  const tokenUrl = `${config.ToChannelFromBotLoginUrl}/oauth2/v2.0/token`;
  const body = new URLSearchParams({
    grant_type: 'client_credentials',
    client_id: appId,
    client_secret: appPassword,
    scope: `${config.ToChannelFromBotOAuthScope}/.default`,
  });
  const res = await fetch(tokenUrl, { method: 'POST', body, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
  if (!res.ok) throw new Error(`token endpoint ${tokenUrl} answered ${res.status}: ${await res.text()}`);
  const t = await res.json();
  // Same 5-minute early expiry AppCredentials applies to MSAL results.
  const expiresOn = new Date(Date.now() + (t.expires_in - 300) * 1000);
  AppCredentials.cache.set(tokenCacheKey, { accessToken: t.access_token, expiresOn });
  const refreshMs = Math.max(30, t.expires_in - 600) * 1000;
  setTimeout(() => seedConnectorToken().catch((e) => console.error(`token refresh failed: ${e.message}`)), refreshMs).unref();
}

const host = env.HOST || '127.0.0.1';
const path = env.BOT_PATH || '/api/messages';

async function main() {
  if (env.SEED_CONNECTOR_TOKEN !== '0') await seedConnectorToken();
  const restify = require('restify');
  const server = restify.createServer();
  server.use(restify.plugins.bodyParser());
  server.post(path, async (req, res) => {
    await adapter.process(req, res, (context) => bot.run(context));
  });
  server.listen(Number(env.PORT || 0), host, () => {
    const port = server.address().port;
    console.log(JSON.stringify({ ready: true, bot: 'botbuilder-js', url: `http://${host}:${port}${path}`, port, pid: process.pid, appId }));
  });
}

main().catch((e) => {
  console.error(`botbuilder echo bot failed to start: ${e.stack || e}`);
  process.exit(1);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
