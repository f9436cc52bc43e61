// scripts/peers/oidc-provider/server.mjs: node `oidc-provider` set up as a client_credentials token issuer that
// mints the same tokens as refbench's token-issuer (RFC 9068 JWT access tokens signed with ES256), for
// scripts/peer-oidc.sh.
//
//   NODE_ENV=production node server.mjs [PORT]      (or env PORT; default 0 = an ephemeral port)
//
// Listens on 127.0.0.1 only; the issuer is http://127.0.0.1:<bound port>. Once listening it prints one line on
// stdout in the shape refbench's own servers use, `REFBENCH_READY {"listeners":{"http":"127.0.0.1:PORT"},...}`.
// Stops on SIGTERM / SIGINT.
//
// Set-up (the same client, credentials, scopes, audience and token lifetime as the built-in issuer's bench-client):
// - one static client `bench-client` / `bench-secret-0123456789abcdef`, grant_types ['client_credentials'],
//   client_secret_basic (token_endpoint_auth_method), no redirect URIs or response types;
// - scopes read write admin; resource indicators (RFC 8707) on, default resource https://api.refbench.test, whose
//   access tokens are JWTs (accessTokenFormat 'jwt', `typ: at+jwt`) signed ES256 for 300 s with aud = the resource;
// - one P-256 signing key generated at start (node:crypto), kid = its RFC 7638 thumbprint, in `jwks`;
// - no devInteractions (client_credentials has no end-user interaction), no persistent adapter needed: JWT access
//   tokens are self-contained and oidc-provider does not store them (see NullAdapter below).
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const CLIENT_ID = 'bench-client';
const CLIENT_SECRET = 'bench-secret-0123456789abcdef';
const SCOPES = 'read write admin';
const RESOURCE = 'https://api.refbench.test';
const ACCESS_TOKEN_TTL_S = 300;

if (process.env.NODE_ENV !== 'production') {
  console.error('oidc-provider peer: run with NODE_ENV=production (the peer is measured as deployed)');
  process.exit(2);
}

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`oidc-provider peer: bad port '${portArg}'`);
  process.exit(2);
}

// The signing key: P-256, generated per process like the built-in issuer's.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = privateKey.export({ format: 'jwk' });
const thumbprint = crypto
  .createHash('sha256')
  .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
  .digest('base64url');
const signingKey = { ...jwk, kid: thumbprint, use: 'sig', alg: 'ES256' };

// Storage for the models oidc-provider persists (sessions, grants, opaque tokens, ...). The client_credentials grant
// with JWT access tokens persists nothing (BaseModel.save only upserts formats that have a stored payload) and the
// only client is static, so nothing reaches an adapter; this one keeps nothing, which also keeps the default
// in-memory development adapter (and its warning) out.
class NullAdapter {
  constructor(name) {
    this.name = name;
  }

  async upsert() {}

  async find() {
    return undefined;
  }

  async findByUserCode() {
    return undefined;
  }

  async findByUid() {
    return undefined;
  }

  async consume() {}

  async destroy() {}

  async revokeByGrantId() {}
}

const server = http.createServer();
// Keep the load generator's connections for the whole phase (Node's default closes idle ones after 5 s).
server.keepAliveTimeout = 75_000;
server.headersTimeout = 80_000;

server.listen(port, '127.0.0.1', () => {
  const addr = server.address();
  const issuer = `http://127.0.0.1:${addr.port}`;

  const provider = new Provider(issuer, {
    adapter: NullAdapter,
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: SCOPES,
      },
    ],
    clientDefaults: {
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'ES256',
    },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    scopes: SCOPES.split(' '),
    jwks: { keys: [signingKey] },
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256'],
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: SCOPES,
            audience: RESOURCE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: ACCESS_TOKEN_TTL_S,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ACCESS_TOKEN_TTL_S,
    },
    // Only client_credentials is served; there is no end-user and no account store.
    findAccount: async () => undefined,
    // Cookies are not used by the token endpoint; keys set so nothing falls back to defaults.
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  });
  provider.proxy = false;
  provider.on('server_error', (_ctx, err) => {
    console.error(`oidc-provider peer: server_error: ${err?.stack ?? err}`);
  });

  server.on('request', provider.callback());
  process.stdout.write(
    `REFBENCH_READY ${JSON.stringify({
      system: 'oidc-provider',
      listeners: { http: `127.0.0.1:${addr.port}` },
      issuer,
      pid: process.pid,
      node: process.version,
    })}\n`,
  );
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
