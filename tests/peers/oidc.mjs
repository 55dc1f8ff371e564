// A real OpenID Connect provider for twokey's tests: `oidc-provider` (pinned in package-lock.json)
// with its development login and consent pages, which the Rust tests drive with a plain
// cookie-keeping HTTP client (no browser).
//
//   node tests/peers/oidc.mjs
//
// Environment:
//   OIDC_PORT           port to listen on, on 127.0.0.1 (default 0: any free port). Restarting on
//                       the same port keeps the issuer URL, which is how the tests rotate keys.
//   OIDC_REDIRECT_URIS  comma-separated redirect URIs of the client `twokey` (its callback).
//   OIDC_API_AUDIENCE   the resource (audience) of API access tokens (default api://twokey).
//
// The first line on stdout is the issuer URL; then the process serves until killed.
//
// Clients:
//   twokey      confidential (client_secret_post, secret "twokey-test-secret"), code + PKCE:
//               what twokey signs in with.
//   twokey-cli  confidential (same secret), code + PKCE, redirect http://127.0.0.1/cli-callback:
//               what a test uses to get API access tokens (JWT, audience = OIDC_API_AUDIENCE, or
//               another resource it names with `resource=`).
//
// Accounts: the login name picks the person (any password). Each carries sub, email, name, oid
// and groups; `overage` carries Entra ID's groups-overage shape (_claim_names) instead of groups.
//
// Signing keys: a fresh RSA key (random kid) every start, so a restart is a key rotation.

import crypto from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 0);
const redirectUris = (process.env.OIDC_REDIRECT_URIS || 'http://127.0.0.1/auth/callback')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const apiAudience = process.env.OIDC_API_AUDIENCE || 'api://twokey';
const SECRET = 'twokey-test-secret';

const ACCOUNTS = {
  alice: {
    email: 'alice@oidc.test',
    name: 'Alice (OIDC)',
    oid: 'a11ce000-0000-4000-8000-0000000000a1',
    groups: ['backup-operators'],
  },
  bob: {
    email: 'bob@oidc.test',
    name: 'Bob (OIDC)',
    oid: 'b0b00000-0000-4000-8000-0000000000b2',
    groups: ['backup-approvers'],
  },
  carol: {
    email: 'carol@oidc.test',
    name: 'Carol (OIDC)',
    oid: 'ca201000-0000-4000-8000-0000000000c3',
    groups: ['security'],
  },
  overage: {
    email: 'olga@oidc.test',
    name: 'Olga (too many groups)',
    oid: '01a00000-0000-4000-8000-0000000000d4',
    overage: true,
  },
};

function personClaims(id) {
  const a = ACCOUNTS[id];
  if (!a) return { sub: id };
  const c = {
    sub: id,
    email: a.email,
    email_verified: true,
    name: a.name,
    oid: a.oid,
  };
  if (a.overage) {
    // What Microsoft Entra ID sends when a user is in more groups than fit in a token.
    c._claim_names = { groups: 'src1' };
    c._claim_sources = { src1: { endpoint: 'https://graph.microsoft.com/v1.0/users/x/getMemberObjects' } };
  } else {
    c.groups = a.groups;
  }
  return c;
}

function makeJwk() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${crypto.randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
}

const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'twokey',
      client_secret: SECRET,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
    {
      client_id: 'twokey-cli',
      client_secret: SECRET,
      redirect_uris: ['http://127.0.0.1/cli-callback'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  jwks: { keys: [makeJwk()] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  // Claims go into the ID token itself, as Entra ID does (not only to userinfo).
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'oid', 'groups', '_claim_names', '_claim_sources'],
  },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return personClaims(sub);
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator === apiAudience || resourceIndicator === 'api://other') {
          return {
            scope: 'api',
            audience: resourceIndicator,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 3600,
            jwt: { sign: { alg: 'RS256' } },
          };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  // API access tokens carry the person's claims, as Entra ID's do.
  async extraTokenClaims(_ctx, token) {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const { sub, email_verified: _ev, ...rest } = personClaims(token.accountId);
    return rest;
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 120,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
});
// Plain http on loopback: tell the provider not to insist on TLS for its own cookies.
provider.proxy = true;

server.on('request', provider.callback());
process.stdout.write(`${issuer}\n`);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// When the test process dies, its pipe closes: go too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
