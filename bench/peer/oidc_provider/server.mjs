// Peer for AgentIAM's token-issuance benchmark: panva/oidc-provider (OpenID Certified),
// configured for exactly one flow:
//
//   POST /token  grant_type=client_credentials
//                client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
//                client_assertion=<ES256 JWT>   (private_key_jwt, RFC 7523)
//                resource=<RESOURCE>            (RFC 8707 -> JWT `aud`)
//                scope=<SCOPE>
//   DPoP: <ES256 proof>                         (RFC 9449, no server nonces)
//
// -> {"token_type":"DPoP","access_token":"<RFC 9068 JWT, typ at+jwt, ES256, cnf.jkt>", "expires_in":300}
//
// Environment: PORT, ISSUER (e.g. http://127.0.0.1:PORT), CLIENT_ID, CLIENT_JWK (public ES256
// JWK of the client, JSON), RESOURCE (audience URI), SCOPE (space-separated). Optional: HOST
// (default 127.0.0.1).
//
// Storage: the default in-memory adapter (oidc-provider's MemoryAdapter, an LRU cache): the
// replay checks on client assertion and DPoP proof `jti`s write to it (two upserts per token);
// JWT-format access tokens themselves are not stored by oidc-provider. It prints one "development-only in-memory adapter" warning at start-up; that
// is expected here, as is "Unsupported runtime. Use Node.js v22.x LTS" on Node 20 (9.x only
// recommends 22+; it has no engines field and runs on 20.20). Nothing is logged per request.
//
// Note: jose verifies and signs through WebCrypto, whose jobs run on libuv's thread pool, so
// this one process uses somewhat more than one core under load.
import * as crypto from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`server.mjs: environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

const PORT = Number.parseInt(required('PORT'), 10);
const HOST = process.env.HOST || '127.0.0.1';
const ISSUER = process.env.ISSUER || `http://${HOST}:${PORT}`;
const CLIENT_ID = required('CLIENT_ID');
const CLIENT_JWK = JSON.parse(required('CLIENT_JWK'));
const RESOURCE = required('RESOURCE');
const SCOPE = required('SCOPE');
const ACCESS_TOKEN_TTL = 300;

// The provider's own ES256 signing key, fresh for each run (never leaves the process).
const signingJwk = {
  ...crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }),
  kid: 'peer-es256',
  alg: 'ES256',
  use: 'sig',
};

const { d: _ignored, ...clientPublicJwk } = CLIENT_JWK; // accept only the public part

const provider = new Provider(ISSUER, {
  // Default in-memory adapter: no `adapter` key on purpose.
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  clients: [
    {
      client_id: CLIENT_ID,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: { keys: [{ ...clientPublicJwk, alg: 'ES256', use: 'sig' }] },
      // Refuse a token request that comes without a DPoP proof.
      dpop_bound_access_tokens: true,
    },
  ],
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['ES256'],
    dPoPSigningAlgValues: ['ES256'],
    idTokenSigningAlgValues: ['ES256'],
  },
  clientDefaults: {
    id_token_signed_response_alg: 'ES256', // default alg for JWT access tokens too
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    // No nonceSecret and requireNonce() -> false: DPoP without server nonces.
    dPoP: { enabled: true, requireNonce: () => false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          audience: RESOURCE,
          scope: SCOPE,
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt', // RFC 9068, typ at+jwt
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: ACCESS_TOKEN_TTL,
    AccessToken: ACCESS_TOKEN_TTL,
  },
});

// Silence: no request logging is installed, and errors are counted rather than printed. Only the
// first server_error is shown so a misconfiguration is still visible.
let serverErrors = 0;
provider.on('server_error', (_ctx, err) => {
  serverErrors += 1;
  if (serverErrors === 1) console.error('oidc-provider server_error:', err);
});
provider.on('error', () => {}); // replaces Koa's default stderr logger

const server = provider.listen(PORT, HOST, () => {
  console.log(`oidc-provider peer listening on ${ISSUER} (token endpoint ${ISSUER}/token)`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
