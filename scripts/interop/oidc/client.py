"""The Python half of scripts/interop-oidc.sh: Authlib (requests client) and joserfc against the token-issuer.

Usage: client.py --issuer http://127.0.0.1:PORT --results FILE [--skip-code-flow]

Prints one line per check, `PASS python <check>`, `FAIL python <check>: <reason>` or `SKIP python <check>: <reason>`,
and writes the same as a JSON list to FILE. Exit status 0 when nothing failed, 1 otherwise. Every HTTP request has a
timeout (REQUEST_TIMEOUT_S); the caller bounds the whole run with `timeout`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import re
import secrets
import sys
import time
import traceback
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

REQUEST_TIMEOUT_S = 5
# The embedded test configuration of token-issuer (servers/token-issuer/src/config.rs); public test secrets.
BENCH_CLIENT = "bench-client"
BENCH_SECRET = "bench-secret-0123456789abcdef"
API_AUDIENCE = "https://api.refbench.test"
REPORTS_AUDIENCE = "https://reports.refbench.test"
# The clients and user of the authorization-code work (branch oidc-code, the agreed API).
WEB_CLIENT = "web-app"
WEB_SECRET = "web-secret-0123456789abcdef"
NATIVE_CLIENT = "native-app"
REDIRECT_URI = "http://127.0.0.1/callback"
USERNAME = "alice"
PASSWORD = "alice-password"
CLOCK_LEEWAY_S = 30

RESULTS: list[dict] = []


class CheckFailed(Exception):
    pass


def ensure(cond: bool, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


def record(status: str, name: str, detail: str = "") -> None:
    RESULTS.append({"client": "python", "check": name, "status": status, "detail": detail})
    line = f"{status} python {name}"
    if detail:
        line += f": {detail}"
    print(line, flush=True)


def check(name: str, fn, *args, **kwargs):
    """Runs one check; records PASS (with fn's return text as detail) or FAIL with the reason. Returns
    (ok, value)."""
    try:
        out = fn(*args, **kwargs)
    except CheckFailed as e:
        record("FAIL", name, str(e))
        return False, None
    except Exception as e:  # an unexpected error is a failure of the check, with the exception as the reason
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].name}:{tb[-1].lineno})" if tb else ""
        record("FAIL", name, f"{type(e).__name__}: {e}{where}")
        return False, None
    detail, value = out if isinstance(out, tuple) else (out, None)
    record("PASS", name, detail or "")
    return True, value


def skip(name: str, reason: str) -> None:
    record("SKIP", name, reason)


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -----------------------------------------------------------------------------------------------------------------
# Discovery and keys


def discovery(issuer: str):
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    r = requests.get(url, timeout=REQUEST_TIMEOUT_S)
    ensure(r.status_code == 200, f"GET {url}: status {r.status_code}")
    ensure(r.headers.get("content-type", "").startswith("application/json"), f"content-type {r.headers.get('content-type')!r}")
    d = r.json()
    ensure(d.get("issuer") == issuer, f"issuer {d.get('issuer')!r} != {issuer!r}")
    origin = issuer.rstrip("/") + "/"
    for k in ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint"):
        ensure(isinstance(d.get(k), str) and d[k].startswith(origin), f"{k} = {d.get(k)!r} is not on {origin}")
    for k in ("token_endpoint_auth_methods_supported",):
        methods = d.get(k) or []
        ensure("client_secret_basic" in methods and "client_secret_post" in methods, f"{k} = {methods}")
    ensure("client_credentials" in (d.get("grant_types_supported") or []), f"grant_types_supported = {d.get('grant_types_supported')}")
    return f"issuer {d['issuer']}, {len(d)} fields", d


def fetch_jwks(disc: dict):
    r = requests.get(disc["jwks_uri"], timeout=REQUEST_TIMEOUT_S)
    ensure(r.status_code == 200, f"GET jwks_uri: status {r.status_code}")
    data = r.json()
    keys = KeySet.import_key_set(data)
    ensure(len(keys.keys) >= 1, "empty JWK Set")
    kids = [k.kid for k in keys.keys]
    ensure(all(kids), f"a key without kid: {kids}")
    algs = sorted({k.get("alg") for k in data["keys"]})
    return f"{len(kids)} keys ({', '.join(algs)}), content-type {r.headers.get('content-type')}", keys


def validate_access_token(token: str, keys: KeySet, issuer: str, audience: str, client_id: str, sub: str | None = None):
    """Verifies an RFC 9068 access token with joserfc; raises on any problem; returns (header, claims)."""
    tok = jwt.decode(token, keys, algorithms=["ES256"])
    h, c = tok.header, tok.claims
    ensure(h.get("alg") == "ES256", f"header alg {h.get('alg')!r}")
    ensure(str(h.get("typ", "")).lower() in ("at+jwt", "application/at+jwt"), f"header typ {h.get('typ')!r}")
    ensure(bool(h.get("kid")), "header without kid")
    jwt.JWTClaimsRegistry(
        leeway=CLOCK_LEEWAY_S,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True, **({"value": sub} if sub else {})},
        jti={"essential": True},
    ).validate(c)
    ensure(c.get("client_id") == client_id, f"client_id {c.get('client_id')!r}")
    ensure(c["exp"] > time.time(), "expired")
    return h, c


class Recorder:
    """A requests response hook: remembers the last request, to see which client authentication was really sent."""

    def __init__(self):
        self.last = None

    def __call__(self, response, *args, **kwargs):
        self.last = response.request


def cc_session(method: str, scope: str) -> tuple[OAuth2Session, Recorder]:
    rec = Recorder()
    s = OAuth2Session(
        BENCH_CLIENT,
        BENCH_SECRET,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        scope=scope,
        default_timeout=REQUEST_TIMEOUT_S,
    )
    s.hooks["response"].append(rec)
    return s, rec


def client_credentials(disc: dict, keys: KeySet, method: str):
    scope = "read write" if method == "client_secret_basic" else "read"
    resource = API_AUDIENCE if method == "client_secret_basic" else REPORTS_AUDIENCE
    s, rec = cc_session(method, scope)
    token = s.fetch_token(disc["token_endpoint"], grant_type="client_credentials", resource=resource)
    req = rec.last
    ensure(req is not None, "no request recorded")
    body = parse_qs(req.body if isinstance(req.body, str) else (req.body or b"").decode())
    if method == "client_secret_basic":
        auth = req.headers.get("Authorization", "")
        ensure(auth.startswith("Basic "), f"Authorization header {auth[:12]!r}")
        ensure("client_secret" not in body, "client_secret in the body as well")
    else:
        ensure("Authorization" not in req.headers, "an Authorization header with client_secret_post")
        ensure(body.get("client_secret") == [BENCH_SECRET], "no client_secret in the body")
    ensure(str(token.get("token_type", "")).lower() == "bearer", f"token_type {token.get('token_type')!r}")
    ensure(isinstance(token.get("expires_in"), int) and token["expires_in"] > 0, f"expires_in {token.get('expires_in')!r}")
    ensure("refresh_token" not in token, "a refresh token for client_credentials")
    h, c = validate_access_token(token["access_token"], keys, disc["issuer"], resource, BENCH_CLIENT, sub=BENCH_CLIENT)
    ensure(c.get("scope") == scope, f"scope claim {c.get('scope')!r} != {scope!r}")
    ensure(token.get("scope") in (None, scope), f"scope in the response {token.get('scope')!r}")
    return (f"{method}; joserfc: alg {h['alg']}, typ {h['typ']}, kid {h['kid'][:8]}..., iss ok, aud {c['aud']}, "
            f"exp in {c['exp'] - int(time.time())} s, scope {c['scope']!r}"), token["access_token"]


def introspect(disc: dict, token: str, expect_active: bool):
    s, _ = cc_session("client_secret_basic", "read")
    r = s.introspect_token(disc["introspection_endpoint"], token=token, token_type_hint="access_token")
    ensure(r.status_code == 200, f"status {r.status_code}: {r.text[:200]}")
    d = r.json()
    ensure(d.get("active") is expect_active, f"active = {d.get('active')!r}, expected {expect_active}: {d}")
    if expect_active:
        ensure(d.get("client_id") == BENCH_CLIENT, f"client_id {d.get('client_id')!r}")
        ensure(d.get("iss") == disc["issuer"], f"iss {d.get('iss')!r}")
        return f"active, client_id {d['client_id']}, scope {d.get('scope')!r}"
    ensure(set(d) == {"active"}, f"an inactive token with more than 'active': {d}")
    return "active: false"


def revoke(disc: dict, token: str):
    s, _ = cc_session("client_secret_basic", "read")
    r = s.revoke_token(disc["revocation_endpoint"], token=token, token_type_hint="access_token")
    ensure(r.status_code == 200, f"status {r.status_code}: {r.text[:200]}")
    return "200"


def tampered(disc: dict, keys: KeySet):
    """A valid token altered in three ways must fail joserfc's verification; a good token with the wrong expected
    audience must fail the claims check."""
    s, _ = cc_session("client_secret_post", "read")
    good = s.fetch_token(disc["token_endpoint"], grant_type="client_credentials")["access_token"]
    validate_access_token(good, keys, disc["issuer"], API_AUDIENCE, BENCH_CLIENT)  # the baseline passes
    h, p, sig = good.split(".")
    claims = b64url_json(p)
    cases = {}
    # 1. the payload changed (scope escalated), the signature kept
    cases["payload scope=admin, old signature"] = f"{h}.{b64url(json.dumps({**claims, 'scope': 'admin'}).encode())}.{sig}"
    # 2. one bit of the signature flipped
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    cases["signature bit flipped"] = f"{h}.{p}.{b64url(bytes(raw))}"
    # 3. re-signed with an attacker's P-256 key under the issuer's kid
    attacker = ECKey.generate_key("P-256", parameters={"kid": b64url_json(h)["kid"]})
    cases["re-signed by another key, same kid"] = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": attacker.kid}, claims, attacker)
    # 4. alg none
    cases["alg none"] = f"{b64url(json.dumps({'alg': 'none', 'typ': 'at+jwt'}).encode())}.{p}."
    accepted = []
    for name, bad in cases.items():
        try:
            jwt.decode(bad, keys, algorithms=["ES256"])
            accepted.append(name)
        except (JoseError, ValueError):
            pass
    ensure(not accepted, f"joserfc accepted: {accepted}")
    try:
        validate_access_token(good, keys, disc["issuer"], "https://elsewhere.refbench.test", BENCH_CLIENT)
        raise CheckFailed("a token for another audience passed the claims check")
    except JoseError:
        pass
    return f"{len(cases)} tampered tokens rejected, wrong audience rejected"


# -----------------------------------------------------------------------------------------------------------------
# Authorization code + PKCE (S256)

FORM_RE = re.compile(r"<form\b[^>]*\baction=\"([^\"]*)\"", re.I)
REQUEST_RE = re.compile(r"<input\b[^>]*\bname=\"request\"[^>]*>", re.I)
VALUE_RE = re.compile(r"\bvalue=\"([^\"]*)\"", re.I)


def authorize(browser: requests.Session, auth_url: str, login: bool = True):
    """Plays the user agent: GET the authorization URL; if the login form comes back, POST it. Returns (Location of
    the redirect to the client, whether a login happened)."""
    r = browser.get(auth_url, allow_redirects=False, timeout=REQUEST_TIMEOUT_S)
    if r.status_code in (302, 303) and r.headers.get("Location", "").startswith(REDIRECT_URI):
        return r.headers["Location"], False
    ensure(r.status_code == 200, f"GET /authorize: status {r.status_code}: {r.text[:200]}")
    ensure(r.headers.get("content-type", "").startswith("text/html"), f"GET /authorize: content-type {r.headers.get('content-type')!r}")
    form = FORM_RE.search(r.text)
    ensure(form is not None, "no <form action=...> in the login page")
    method = re.search(r"<form\b[^>]*\bmethod=\"([^\"]*)\"", r.text, re.I)
    ensure(method is not None and method.group(1).lower() == "post", "the login form is not method=post")
    inp = REQUEST_RE.search(r.text)
    ensure(inp is not None, "no <input name=\"request\"> in the login page")
    val = VALUE_RE.search(inp.group(0))
    ensure(val is not None and val.group(1), "the request input has no value")
    for field in ("username", "password"):
        ensure(re.search(rf"<input\b[^>]*\bname=\"{field}\"", r.text, re.I), f"no {field} input in the login page")
    login_url = urljoin(r.url, html.unescape(form.group(1)))
    ensure(urlsplit(login_url).netloc == urlsplit(auth_url).netloc, f"the form posts elsewhere: {login_url}")
    ensure(login, "a login form where a session was expected")
    r2 = browser.post(
        login_url,
        data={"request": html.unescape(val.group(1)), "username": USERNAME, "password": PASSWORD},
        allow_redirects=False,
        timeout=REQUEST_TIMEOUT_S,
    )
    ensure(r2.status_code in (302, 303), f"POST {login_url}: status {r2.status_code}: {r2.text[:200]}")
    loc = r2.headers.get("Location", "")
    ensure(loc.startswith(REDIRECT_URI + "?"), f"Location {loc!r} is not the redirect URI")
    ensure("rb_session=" in r2.headers.get("Set-Cookie", ""), f"no rb_session cookie: {r2.headers.get('Set-Cookie')!r}")
    return loc, True


def check_callback(loc: str, state: str, issuer: str) -> str:
    q = parse_qs(urlsplit(loc).query)
    ensure("error" not in q, f"error in the callback: {q}")
    ensure(q.get("state") == [state], f"state {q.get('state')} != {state!r}")
    ensure(q.get("iss") == [issuer], f"iss {q.get('iss')} != {issuer!r} (RFC 9207)")
    ensure(len(q.get("code", [])) == 1 and q["code"][0], f"no code: {q}")
    return q["code"][0]


def validate_id_token(id_token: str, keys: KeySet, issuer: str, client_id: str, nonce: str, access_token: str):
    tok = jwt.decode(id_token, keys, algorithms=["ES256"])
    h, c = tok.header, tok.claims
    ensure(h.get("alg") == "ES256" and h.get("kid"), f"header {h}")
    ensure(h.get("typ", "JWT").upper() == "JWT", f"header typ {h.get('typ')!r}")
    jwt.JWTClaimsRegistry(
        leeway=CLOCK_LEEWAY_S,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        nonce={"essential": True, "value": nonce},
        at_hash={"essential": True},
    ).validate(c)
    if isinstance(c["aud"], list) and len(c["aud"]) > 1:
        ensure(c.get("azp") == client_id, f"several audiences and azp {c.get('azp')!r}")
    digest = hashlib.sha256(access_token.encode()).digest()
    ensure(c["at_hash"] == b64url(digest[: len(digest) // 2]), "at_hash does not match the access token")
    return h, c


def code_flow(disc: dict, keys: KeySet, confidential: bool):
    issuer = disc["issuer"]
    client_id = WEB_CLIENT if confidential else NATIVE_CLIENT
    client = OAuth2Session(
        client_id,
        WEB_SECRET if confidential else None,
        token_endpoint_auth_method="client_secret_basic" if confidential else "none",
        scope="openid profile email",
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
        default_timeout=REQUEST_TIMEOUT_S,
    )
    verifier = generate_token(64)
    nonce = secrets.token_urlsafe(16)
    auth_url, state = client.create_authorization_url(disc["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
    q = parse_qs(urlsplit(auth_url).query)
    ensure(q.get("code_challenge_method") == ["S256"] and q.get("code_challenge"), f"no S256 challenge in {auth_url}")
    browser = requests.Session()
    loc, logged_in = authorize(browser, auth_url)
    check_callback(loc, state, issuer)
    token = client.fetch_token(disc["token_endpoint"], authorization_response=loc, state=state, code_verifier=verifier)
    for k in ("access_token", "id_token", "refresh_token"):
        ensure(token.get(k), f"no {k} in the token response: {sorted(token)}")
    ensure(str(token.get("token_type", "")).lower() == "bearer", f"token_type {token.get('token_type')!r}")
    h, c = validate_id_token(token["id_token"], keys, issuer, client_id, nonce, token["access_token"])
    ah = jwt.decode(token["access_token"], keys, algorithms=["ES256"])
    ensure(str(ah.header.get("typ", "")).lower() in ("at+jwt", "application/at+jwt"), f"access token typ {ah.header.get('typ')!r}")
    ensure(ah.claims.get("iss") == issuer and ah.claims.get("sub") == c["sub"] and ah.claims.get("client_id") == client_id,
           f"access token claims {ah.claims}")
    return (f"{client_id} ({'client_secret_basic' if confidential else 'public, none'}): login form, 302 with code/state/iss, "
            f"rb_session cookie; joserfc ID token: iss, aud {c['aud']}, nonce, exp, at_hash ok, sub {c['sub']}"), (client, token, c, browser)


def userinfo(disc: dict, client: OAuth2Session, claims: dict):
    ensure(disc.get("userinfo_endpoint"), "no userinfo_endpoint in discovery")
    r = client.get(disc["userinfo_endpoint"], timeout=REQUEST_TIMEOUT_S)  # Bearer from the session's token
    ensure(r.request.headers.get("Authorization", "").startswith("Bearer "), "no Bearer header sent")
    ensure(r.status_code == 200, f"status {r.status_code}: {r.text[:200]}")
    u = r.json()
    ensure(u.get("sub") == claims["sub"], f"userinfo sub {u.get('sub')!r} != ID token sub {claims['sub']!r}")
    r2 = requests.get(disc["userinfo_endpoint"], headers={"Authorization": "Bearer not-a-token"}, timeout=REQUEST_TIMEOUT_S)
    ensure(r2.status_code == 401, f"a bad bearer token: status {r2.status_code}")
    return f"sub {u['sub']}, fields {sorted(u)}; a bad token is 401"


def refresh(disc: dict, keys: KeySet, client: OAuth2Session, token: dict, claims: dict):
    old_rt = token["refresh_token"]
    new = client.refresh_token(disc["token_endpoint"], refresh_token=old_rt)
    ensure(new.get("access_token") and new["access_token"] != token["access_token"], "no new access token")
    a = jwt.decode(new["access_token"], keys, algorithms=["ES256"])
    jwt.JWTClaimsRegistry(leeway=CLOCK_LEEWAY_S, iss={"essential": True, "value": disc["issuer"]},
                          exp={"essential": True}, sub={"essential": True, "value": claims["sub"]}).validate(a.claims)
    rotated = bool(new.get("refresh_token")) and new["refresh_token"] != old_rt
    if new.get("id_token"):
        jt = jwt.decode(new["id_token"], keys, algorithms=["ES256"])
        ensure(jt.claims.get("sub") == claims["sub"] and jt.claims.get("aud") in (claims["aud"], [claims["aud"]]),
               f"refreshed ID token claims {jt.claims}")
    return f"new access token (sub {a.claims['sub']}), refresh token {'rotated' if rotated else 'kept'}"


def wrong_verifier(disc: dict, browser: requests.Session):
    """A fresh code redeemed with a code_verifier that does not match the challenge: invalid_grant."""
    client = OAuth2Session(WEB_CLIENT, WEB_SECRET, token_endpoint_auth_method="client_secret_basic", scope="openid",
                           redirect_uri=REDIRECT_URI, code_challenge_method="S256", default_timeout=REQUEST_TIMEOUT_S)
    verifier = generate_token(64)
    auth_url, state = client.create_authorization_url(disc["authorization_endpoint"], code_verifier=verifier,
                                                      nonce=secrets.token_urlsafe(16))
    loc, logged_in = authorize(browser, auth_url)
    check_callback(loc, state, disc["issuer"])
    try:
        client.fetch_token(disc["token_endpoint"], authorization_response=loc, state=state, code_verifier=generate_token(64))
    except Exception as e:  # authlib raises OAuthError with the server's error code
        err = getattr(e, "error", None)
        ensure(err == "invalid_grant", f"expected invalid_grant, got {type(e).__name__}: {e}")
        return f"invalid_grant ({'new login' if logged_in else 'session cookie reused, no login form'})"
    raise CheckFailed("the token endpoint accepted a wrong code_verifier")


# -----------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--skip-code-flow", action="store_true")
    a = ap.parse_args()
    try:
        run(a)
    finally:
        with open(a.results, "w") as f:
            json.dump(RESULTS, f, indent=1)
    return 1 if any(r["status"] == "FAIL" for r in RESULTS) else 0


def run(a) -> None:
    ok, disc = check("discovery", discovery, a.issuer)
    if not ok:
        return
    ok, keys = check("jwks (joserfc KeySet)", fetch_jwks, disc)
    if not ok:
        return
    ok, at = check("client_credentials basic", client_credentials, disc, keys, "client_secret_basic")
    check("client_credentials post", client_credentials, disc, keys, "client_secret_post")
    if ok:
        check("introspect active", introspect, disc, at, True)
        if check("revoke", revoke, disc, at)[0]:
            check("introspect after revoke inactive", introspect, disc, at, False)
    else:
        for n in ("introspect active", "revoke", "introspect after revoke inactive"):
            skip(n, "no token from client_credentials basic")
    check("tampered token rejected (joserfc)", tampered, disc, keys)

    code_checks = ("code+pkce web-app", "userinfo", "refresh", "code+pkce wrong verifier rejected", "code+pkce native-app (public)")
    if a.skip_code_flow:
        for n in code_checks:
            skip(n, "--skip-code-flow")
        return
    if not disc.get("authorization_endpoint"):
        record("FAIL", "code+pkce", "authorization code flow not advertised (no authorization_endpoint in discovery)")
        return
    ok, st = check("code+pkce web-app", code_flow, disc, keys, True)
    if ok:
        client, token, claims, browser = st
        check("userinfo", userinfo, disc, client, claims)
        check("refresh", refresh, disc, keys, client, token, claims)
        check("code+pkce wrong verifier rejected", wrong_verifier, disc, browser)
    else:
        for n in ("userinfo", "refresh", "code+pkce wrong verifier rejected"):
            skip(n, "the code flow failed")
    check("code+pkce native-app (public)", code_flow, disc, keys, False)


if __name__ == "__main__":
    sys.exit(main())
