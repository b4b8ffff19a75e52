"""Who is connecting: JWT verification at the upgrade, before any WebSocket exists.

Theory of operation: a token is looked for, in this order, in

1. ``Authorization: Bearer <token>`` (best: never logged in URLs, but browsers cannot set it),
2. ``Sec-WebSocket-Protocol: millionws.bearer.<token>`` (what a browser *can* set; the server
   answers with the ``millionws`` subprotocol when the client offered it, else with nothing
   that echoes the token back),
3. ``?token=<token>`` in the URL (works everywhere, but URLs end up in access logs and
   browser history: keep such tokens short-lived).

The token is verified with PyJWT: HS256 with ``--auth-jwt-secret``, RS256/ES256 with the
keys of ``--auth-jwks`` (a JWKS file; the ``kid`` header picks the key), ``exp`` required,
``nbf``/``iat`` honoured, ``aud``/``iss`` when configured.  The claims become an
:class:`Identity`: ``sub`` is the user id, ``channels`` a list of glob patterns of the
channels the connection may subscribe and publish to (absent: none).  A refusal is an
:class:`AuthError` carrying the reason it is counted under.  Nothing here touches a socket.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

PROTOCOL = b"millionws"
PROTOCOL_TOKEN_PREFIX = b"millionws.bearer."

AUTH_REASONS = ("missing", "malformed", "expired", "bad_signature", "invalid_claims", "unknown_key")
(A_MISSING, A_MALFORMED, A_EXPIRED, A_BAD_SIGNATURE, A_INVALID_CLAIMS, A_UNKNOWN_KEY) = range(len(AUTH_REASONS))


class AuthError(Exception):
    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token grants.  ``expires`` is a Unix time, or None."""

    user: str | None
    patterns: tuple[str, ...]
    expires: float | None

    def may_use(self, channel: str) -> bool:
        return any(_match(pattern, channel) for pattern in self.patterns)


_compiled: dict[str, re.Pattern[str]] = {}


def _match(pattern: str, channel: str) -> bool:
    if pattern == channel or pattern == "*":
        return True
    regex = _compiled.get(pattern)
    if regex is None:
        if len(_compiled) > 4096:
            _compiled.clear()
        regex = _compiled[pattern] = re.compile(fnmatch.translate(pattern))
    return regex.match(channel) is not None


class Verifier:
    """Verifies tokens with one HS256 secret and/or the keys of a JWKS file."""

    def __init__(self, secret: str | None = None, jwks_path: str | None = None, audience: str | None = None,
                 issuer: str | None = None, leeway: float = 5.0) -> None:
        self.secret = secret
        self.keys: dict[str | None, Any] = {}
        if jwks_path:
            # Checked when the server starts (supervisor.preflight): a bad file stops it with one line.
            try:
                with open(jwks_path) as f:
                    document = json.load(f)
                keys = jwt.PyJWKSet.from_dict(document).keys
            except OSError as exc:
                raise ValueError(f"auth_jwks: cannot read {jwks_path}: {exc.strerror or exc}") from None
            except (ValueError, TypeError, AttributeError, KeyError, jwt.PyJWTError) as exc:
                raise ValueError(f"auth_jwks: {jwks_path} holds no usable key ({exc})") from None
            for jwk in keys:
                self.keys[jwk.key_id] = jwk
        if not secret and not self.keys:
            raise ValueError("a verifier needs --auth-jwt-secret or --auth-jwks")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(A_MALFORMED, f"malformed token: {exc}") from None
        alg = header.get("alg")
        kid = header.get("kid")
        if kid is not None and type(kid) is not str:  # a list or object here would be an unhashable key
            raise AuthError(A_MALFORMED, "malformed token: kid must be a string")
        if alg == "HS256" and self.secret:
            key: Any = self.secret
        elif alg in ("RS256", "ES256") and self.keys:
            jwk = self.keys.get(kid) or (next(iter(self.keys.values())) if len(self.keys) == 1
                                                        else None)
            if jwk is None:
                raise AuthError(A_UNKNOWN_KEY, "no key for this token's kid")
            if getattr(jwk, "algorithm_name", alg) != alg:
                raise AuthError(A_BAD_SIGNATURE, "key and token algorithms differ")
            key = jwk.key
        else:
            raise AuthError(A_BAD_SIGNATURE, f"algorithm {alg!r} is not accepted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(A_EXPIRED, "token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError(A_BAD_SIGNATURE, "bad signature") from None
        except jwt.DecodeError as exc:
            raise AuthError(A_MALFORMED, f"malformed token: {exc}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(A_INVALID_CLAIMS, f"invalid claims: {exc}") from None
        return identity_of(claims)


# A user id (``sub``) and a channel pattern: checked here, where they enter, so that nothing
# downstream (a channel name in a JSON frame, a record to another worker, a NATS subject)
# ever meets a character it would have to escape.  The user alphabet is channels.USER_RE's.
_SUB = re.compile(r"[A-Za-z0-9._:@+=|-]{1,128}\Z")
_PATTERN = re.compile(r"[A-Za-z0-9._:*?!\[\]-]{1,256}\Z")
MAX_PATTERNS = 256
_MAX_EXP = float(1 << 53)


def identity_of(claims: dict[str, Any]) -> Identity:
    """The identity of verified ``claims``; AuthError(invalid_claims) for what breaks the rules."""
    sub = claims.get("sub")
    patterns = claims.get("channels", [])
    if sub is not None and (type(sub) is not str or _SUB.match(sub) is None):
        raise AuthError(A_INVALID_CLAIMS, "sub must be 1 to 128 characters of A-Z a-z 0-9 . _ : - @ + = |")
    if (type(patterns) is not list or len(patterns) > MAX_PATTERNS
            or not all(type(p) is str and _PATTERN.match(p) is not None for p in patterns)):
        raise AuthError(A_INVALID_CLAIMS, f"channels must be a list of at most {MAX_PATTERNS} channel patterns "
                        "(A-Z a-z 0-9 . _ : - and * ? [ ] !)")
    exp = claims.get("exp")
    if exp is not None and (type(exp) not in (int, float) or not 0 < exp < _MAX_EXP):
        raise AuthError(A_INVALID_CLAIMS, "exp must be a number of seconds within 0..2^53")
    return Identity(sub, tuple(patterns), float(exp) if exp is not None else None)


def bearer(value: bytes | None) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <credentials>`` value, else None."""
    scheme, _, credentials = (value or b"").strip().partition(b" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == b"bearer" and credentials else None


def extract_token(headers: list[tuple[bytes, bytes]], target: bytes) -> tuple[str | None, bool]:
    """(token or None, whether the client offered the plain ``millionws`` subprotocol)."""
    token: bytes | None = None
    offered = False
    for name, value in headers:
        if name == b"authorization" and token is None:
            token = bearer(value)
        elif name == b"sec-websocket-protocol":
            for proto in value.split(b","):
                proto = proto.strip()
                if proto == PROTOCOL:
                    offered = True
                elif proto.startswith(PROTOCOL_TOKEN_PREFIX) and token is None:
                    token = proto[len(PROTOCOL_TOKEN_PREFIX):]
    if token is None and b"?" in target:
        values = parse_qs(target.split(b"?", 1)[1].decode("latin-1")).get("token")
        if values:
            return values[0], offered
    return (token.decode("latin-1") if token is not None else None), offered
