// The Node half of scripts/interop-oidc.sh: openid-client 6 (and jose, its JOSE dependency) against the token-issuer.
//
// Usage: node client.mjs --issuer http://127.0.0.1:PORT --results FILE [--skip-code-flow]
//
// Prints one line per check, `PASS node <check>`, `FAIL node <check>: <reason>` or `SKIP node <check>: <reason>`, and
// writes the same as a JSON list to FILE. Exit status 0 when nothing failed, 1 otherwise. Every request has a timeout
// (openid-client's Configuration.timeout, AbortSignal.timeout for plain fetch, jose's timeoutDuration) and a watchdog
// ends the process after WATCHDOG_MS whatever happens; the caller bounds the whole run with `timeout` as well.
import { createHash } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

import * as client from 'openid-client'
import { createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose'

const REQUEST_TIMEOUT_S = 5
const WATCHDOG_MS = 120_000
// The embedded test configuration of token-issuer (servers/token-issuer/src/config.rs); public test secrets.
const BENCH_CLIENT = 'bench-client'
const BENCH_SECRET = 'bench-secret-0123456789abcdef'
const API_AUDIENCE = 'https://api.refbench.test'
const REPORTS_AUDIENCE = 'https://reports.refbench.test'
// The clients and user of the authorization-code work (branch oidc-code, the agreed API).
const WEB_CLIENT = 'web-app'
const WEB_SECRET = 'web-secret-0123456789abcdef'
const NATIVE_CLIENT = 'native-app'
const REDIRECT_URI = 'http://127.0.0.1/callback'
const USERNAME = 'alice'
const PASSWORD = 'alice-password'
const CLOCK_LEEWAY_S = 30

const { values: args } = parseArgs({
  options: {
    issuer: { type: 'string' },
    results: { type: 'string' },
    'skip-code-flow': { type: 'boolean', default: false },
  },
})
if (!args.issuer || !args.results) {
  console.error('usage: node client.mjs --issuer URL --results FILE [--skip-code-flow]')
  process.exit(2)
}
const ISSUER = args.issuer
const results = []

function save() {
  writeFileSync(args.results, JSON.stringify(results, null, 1))
}
setTimeout(() => {
  record('FAIL', 'watchdog', `still running after ${WATCHDOG_MS / 1000} s`)
  save()
  process.exit(1)
}, WATCHDOG_MS).unref()

class CheckFailed extends Error {}
function ensure(cond, reason) {
  if (!cond) throw new CheckFailed(reason)
}
function record(status, name, detail = '') {
  results.push({ client: 'node', check: name, status, detail })
  console.log(`${status} node ${name}${detail ? `: ${detail}` : ''}`)
}
async function check(name, fn) {
  try {
    const out = await fn()
    const [detail, value] = Array.isArray(out) ? out : [out, undefined]
    record('PASS', name, detail ?? '')
    return [true, value]
  } catch (e) {
    const why = e instanceof CheckFailed ? e.message : `${e?.name ?? 'Error'}${e?.code ? ` ${e.code}` : ''}: ${e?.message ?? e}${e?.cause?.message ? ` (cause: ${e.cause.message})` : ''}`
    record('FAIL', name, why)
    return [false, undefined]
  }
}
const skip = (name, reason) => record('SKIP', name, reason)
const b64url = (buf) => Buffer.from(buf).toString('base64url')

// A fetch that remembers the last request, to see which client authentication openid-client really sent.
function recordingFetch(log) {
  return (url, options) => {
    log.last = { url: String(url), headers: new Headers(options.headers), body: options.body ? String(options.body) : '' }
    return fetch(url, options)
  }
}

// Discovery. The issuer is plain http on loopback: openid-client (through oauth4webapi) refuses non-https URLs
// unless the Configuration carries `allowInsecureRequests`, which `execute` applies to the discovery request itself and
// to every later request of this Configuration. That is fine here because every request goes to 127.0.0.1 (this
// script never talks to anything else); it must not be copied into a client of a non-loopback issuer.
async function discover(clientId, secret, auth) {
  const log = {}
  const config = await client.discovery(new URL(ISSUER), clientId, secret, auth, {
    execute: [client.allowInsecureRequests],
    timeout: REQUEST_TIMEOUT_S,
  })
  config[client.customFetch] = recordingFetch(log)
  return [config, log]
}

let JWKS
async function verifyAccessToken(token, { audience, clientId, sub }) {
  const { payload, protectedHeader } = await jwtVerify(token, JWKS, {
    issuer: ISSUER,
    audience,
    typ: 'at+jwt', // RFC 9068 §4; jose compares it with and without the application/ prefix
    algorithms: ['ES256'],
    clockTolerance: CLOCK_LEEWAY_S,
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id'],
  })
  ensure(protectedHeader.kid, 'no kid in the header')
  ensure(payload.client_id === clientId, `client_id ${payload.client_id}`)
  if (sub) ensure(payload.sub === sub, `sub ${payload.sub}`)
  return { payload, protectedHeader }
}

async function clientCredentials(method) {
  const auth = method === 'client_secret_basic' ? client.ClientSecretBasic() : client.ClientSecretPost()
  const [config, log] = await discover(BENCH_CLIENT, BENCH_SECRET, auth)
  const scope = method === 'client_secret_basic' ? 'read write' : 'read'
  const resource = method === 'client_secret_basic' ? API_AUDIENCE : REPORTS_AUDIENCE
  const t = await client.clientCredentialsGrant(config, { scope, resource })
  const body = new URLSearchParams(log.last.body)
  if (method === 'client_secret_basic') {
    ensure((log.last.headers.get('authorization') ?? '').startsWith('Basic '), 'no Basic Authorization header sent')
    ensure(!body.has('client_secret'), 'client_secret in the body as well')
  } else {
    ensure(!log.last.headers.has('authorization'), 'an Authorization header with client_secret_post')
    ensure(body.get('client_secret') === BENCH_SECRET, 'no client_secret in the body')
  }
  ensure(t.token_type.toLowerCase() === 'bearer', `token_type ${t.token_type}`)
  ensure(!t.refresh_token, 'a refresh token for client_credentials')
  const { payload, protectedHeader } = await verifyAccessToken(t.access_token, { audience: resource, clientId: BENCH_CLIENT, sub: BENCH_CLIENT })
  ensure(payload.scope === scope, `scope claim ${payload.scope}`)
  return [`${method}; jose jwtVerify: alg ${protectedHeader.alg}, typ ${protectedHeader.typ}, iss, aud ${payload.aud}, exp in ${payload.exp - Math.floor(Date.now() / 1000)} s, scope '${payload.scope}'`, { config, token: t.access_token }]
}

async function introspect(config, token, expectActive) {
  const r = await client.tokenIntrospection(config, token, { token_type_hint: 'access_token' })
  ensure(r.active === expectActive, `active = ${r.active}, expected ${expectActive}: ${JSON.stringify(r)}`)
  if (expectActive) {
    ensure(r.client_id === BENCH_CLIENT && r.iss === ISSUER, `claims ${JSON.stringify(r)}`)
    return `active, client_id ${r.client_id}, scope '${r.scope}'`
  }
  return 'active: false'
}

async function tampered(config) {
  const t = await client.clientCredentialsGrant(config, { scope: 'read' })
  const good = t.access_token
  await verifyAccessToken(good, { audience: API_AUDIENCE, clientId: BENCH_CLIENT }) // the baseline passes
  const [h, p, s] = good.split('.')
  const claims = JSON.parse(Buffer.from(p, 'base64url'))
  const sig = Buffer.from(s, 'base64url')
  sig[5] ^= 1
  const cases = {
    'payload scope=admin, old signature': `${h}.${b64url(JSON.stringify({ ...claims, scope: 'admin' }))}.${s}`,
    'signature bit flipped': `${h}.${p}.${b64url(sig)}`,
    'alg none': `${b64url(JSON.stringify({ alg: 'none', typ: 'at+jwt' }))}.${p}.`,
  }
  const accepted = []
  for (const [name, bad] of Object.entries(cases)) {
    try {
      await verifyAccessToken(bad, { audience: API_AUDIENCE, clientId: BENCH_CLIENT })
      accepted.push(name)
    } catch (e) {
      if (!(e instanceof joseErrors.JOSEError)) throw e
    }
  }
  ensure(accepted.length === 0, `jose accepted: ${accepted.join(', ')}`)
  try {
    await verifyAccessToken(good, { audience: 'https://elsewhere.refbench.test', clientId: BENCH_CLIENT })
    throw new CheckFailed('a token for another audience passed jwtVerify')
  } catch (e) {
    if (!(e instanceof joseErrors.JWTClaimValidationFailed)) throw e
  }
  return `${Object.keys(cases).length} tampered tokens rejected, wrong audience rejected`
}

// ---------------------------------------------------------------------------------------------------------------
// Authorization code + PKCE (S256)

const unescapeHtml = (s) => s.replace(/&quot;/g, '"').replace(/&#39;|&#x27;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&')

// Plays the user agent: GET the authorization URL, POST the login form; returns the Location of the redirect.
async function userAgentLogin(authUrl) {
  const signal = () => AbortSignal.timeout(REQUEST_TIMEOUT_S * 1000)
  const r = await fetch(authUrl, { redirect: 'manual', signal: signal() })
  const page = await r.text()
  ensure(r.status === 200, `GET /authorize: status ${r.status}: ${page.slice(0, 200)}`)
  ensure((r.headers.get('content-type') ?? '').startsWith('text/html'), `GET /authorize: content-type ${r.headers.get('content-type')}`)
  const form = page.match(/<form\b[^>]*\baction="([^"]*)"/i)
  ensure(form, 'no <form action=...> in the login page')
  const input = page.match(/<input\b[^>]*\bname="request"[^>]*>/i)
  const value = input?.[0].match(/\bvalue="([^"]*)"/i)
  ensure(value?.[1], 'no <input name="request" value=...> in the login page')
  const loginUrl = new URL(unescapeHtml(form[1]), authUrl)
  ensure(loginUrl.origin === new URL(authUrl).origin, `the form posts elsewhere: ${loginUrl}`)
  const r2 = await fetch(loginUrl, {
    method: 'POST',
    redirect: 'manual',
    body: new URLSearchParams({ request: unescapeHtml(value[1]), username: USERNAME, password: PASSWORD }),
    signal: signal(),
  })
  await r2.arrayBuffer()
  ensure(r2.status === 302 || r2.status === 303, `POST /login: status ${r2.status}`)
  const loc = r2.headers.get('location') ?? ''
  ensure(loc.startsWith(`${REDIRECT_URI}?`), `Location ${loc} is not the redirect URI`)
  ensure(r2.headers.getSetCookie().some((c) => c.startsWith('rb_session=')), 'no rb_session cookie')
  return loc
}

async function codeFlow(confidential) {
  const clientId = confidential ? WEB_CLIENT : NATIVE_CLIENT
  const [config] = confidential
    ? await discover(WEB_CLIENT, WEB_SECRET, client.ClientSecretPost())
    : await discover(NATIVE_CLIENT, undefined, client.None())
  const codeVerifier = client.randomPKCECodeVerifier()
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier)
  const state = client.randomState()
  const nonce = client.randomNonce()
  const authUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope: 'openid profile email',
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  const loc = await userAgentLogin(authUrl)
  // Checks state, iss (RFC 9207), redeems the code with the verifier, and validates the ID token (signature against
  // jwks_uri, iss, aud, exp, iat, nonce).
  const tokens = await client.authorizationCodeGrant(config, new URL(loc), {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  })
  const claims = tokens.claims()
  ensure(claims, 'no ID token claims')
  ensure(claims.aud === clientId || (Array.isArray(claims.aud) && claims.aud.includes(clientId)), `aud ${claims.aud}`)
  const idHeader = decodeProtectedHeader(tokens.id_token)
  ensure((idHeader.typ ?? 'JWT').toUpperCase() === 'JWT', `ID token typ ${idHeader.typ}`)
  const digest = createHash('sha256').update(tokens.access_token).digest()
  ensure(claims.at_hash === b64url(digest.subarray(0, 16)), `at_hash ${claims.at_hash} does not match the access token`)
  ensure(tokens.refresh_token, 'no refresh_token')
  return [`${clientId} (${confidential ? 'client_secret_post' : 'public, none'}): login form, 302; authorizationCodeGrant validated the ID token (alg ${idHeader.alg}, nonce, iss, aud ${claims.aud}); at_hash ok; sub ${claims.sub}`, { config, tokens, claims }]
}

// A fresh code redeemed with a code_verifier that does not match its challenge must be refused with invalid_grant.
async function wrongVerifier({ config }) {
  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const authUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope: 'openid',
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce: client.randomNonce(),
  })
  const loc = await userAgentLogin(authUrl)
  try {
    await client.authorizationCodeGrant(config, new URL(loc), { pkceCodeVerifier: client.randomPKCECodeVerifier(), expectedState: state })
  } catch (e) {
    ensure(e?.error === 'invalid_grant', `expected invalid_grant, got ${e?.name} ${e?.error ?? ''}: ${e?.message}`)
    return `invalid_grant (${e.error_description ?? 'no description'})`
  }
  throw new CheckFailed('the token endpoint accepted a wrong code_verifier')
}

async function userinfo({ config, tokens, claims }) {
  const u = await client.fetchUserInfo(config, tokens.access_token, claims.sub) // checks sub == the ID token's
  return `sub ${u.sub}, fields ${Object.keys(u).sort().join(',')}`
}

async function refresh({ config, tokens, claims }) {
  const t = await client.refreshTokenGrant(config, tokens.refresh_token)
  ensure(t.access_token && t.access_token !== tokens.access_token, 'no new access token')
  const { payload } = await jwtVerify(t.access_token, JWKS, { issuer: ISSUER, typ: 'at+jwt', algorithms: ['ES256'], clockTolerance: CLOCK_LEEWAY_S })
  ensure(payload.sub === claims.sub, `sub ${payload.sub} != ${claims.sub}`)
  const rotated = t.refresh_token && t.refresh_token !== tokens.refresh_token
  return `new access token (sub ${payload.sub}), refresh token ${rotated ? 'rotated' : 'kept'}${t.id_token ? ', new ID token validated' : ''}`
}

// ---------------------------------------------------------------------------------------------------------------

async function run() {
  const [ok, disc] = await check('discovery', async () => {
    const [config] = await discover(BENCH_CLIENT, BENCH_SECRET, client.ClientSecretBasic())
    const m = config.serverMetadata()
    ensure(m.issuer === ISSUER, `issuer ${m.issuer}`)
    for (const k of ['token_endpoint', 'jwks_uri', 'introspection_endpoint', 'revocation_endpoint']) {
      ensure(typeof m[k] === 'string' && m[k].startsWith(`${ISSUER}/`), `${k} = ${m[k]}`)
    }
    JWKS = createRemoteJWKSet(new URL(m.jwks_uri), { timeoutDuration: REQUEST_TIMEOUT_S * 1000 })
    return [`issuer ${m.issuer} (allowInsecureRequests: http on loopback)`, m]
  })
  if (!ok) return
  const [ccOk, cc] = await check('client_credentials basic', () => clientCredentials('client_secret_basic'))
  await check('client_credentials post', () => clientCredentials('client_secret_post'))
  if (ccOk) {
    await check('introspect active', () => introspect(cc.config, cc.token, true))
    const [revoked] = await check('revoke', async () => {
      await client.tokenRevocation(cc.config, cc.token, { token_type_hint: 'access_token' })
      return '200'
    })
    if (revoked) await check('introspect after revoke inactive', () => introspect(cc.config, cc.token, false))
    await check('tampered token rejected (jose)', () => tampered(cc.config))
  } else {
    for (const n of ['introspect active', 'revoke', 'introspect after revoke inactive', 'tampered token rejected (jose)']) skip(n, 'no client_credentials token')
  }

  const codeChecks = ['code+pkce web-app', 'userinfo', 'refresh', 'code+pkce wrong verifier rejected', 'code+pkce native-app (public)']
  if (args['skip-code-flow']) {
    for (const n of codeChecks) skip(n, '--skip-code-flow')
    return
  }
  if (!disc.authorization_endpoint) {
    record('FAIL', 'code+pkce', 'authorization code flow not advertised (no authorization_endpoint in discovery)')
    return
  }
  const [codeOk, st] = await check('code+pkce web-app', () => codeFlow(true))
  if (codeOk) {
    await check('userinfo', () => userinfo(st))
    await check('refresh', () => refresh(st))
    await check('code+pkce wrong verifier rejected', () => wrongVerifier(st))
  } else {
    for (const n of ['userinfo', 'refresh', 'code+pkce wrong verifier rejected']) skip(n, 'the code flow failed')
  }
  await check('code+pkce native-app (public)', () => codeFlow(false))
}

try {
  await run()
} catch (e) {
  record('FAIL', 'unexpected', `${e?.name}: ${e?.message ?? e}`)
}
save()
process.exitCode = results.some((r) => r.status === 'FAIL') ? 1 : 0
