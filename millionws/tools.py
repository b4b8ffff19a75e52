"""Operator commands beside ``serve``: ``check-config`` and ``gen-token``.

Theory of operation: neither command has rules of its own.  ``check-config`` resolves the
configuration exactly as ``serve`` does (:func:`configfile.load`: flags, environment, file,
defaults, then ``Config.validate``) and runs the supervisor's own start-up checks that need no
server (``check_keys``, ``check_tls``, ``check_bus``); it does not claim the port, since the
server it checks for may be running.  The broker is contacted only with ``--probe``: a check
in CI must not depend on a broker being reachable from there.

``gen-token`` builds the claims, checks them with :func:`auth.identity_of` (the rules the
server applies to every token) and verifies the signed token with :class:`auth.Verifier`
configured as the server would be, so what it prints is what the server accepts, and what the
server would refuse it refuses with exit status 2 instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

import jwt

from . import config, configfile
from .auth import MAX_PATTERNS, AuthError, Verifier, identity_of
from .pubsub.brokers import redact
from .server.supervisor import StartupError, check_bus, check_keys, check_tls

# Options whose values never reach a terminal or a CI log.
SECRETS = frozenset({"auth_jwt_secret", "backend_token"})


def add_check_config(commands: Any) -> None:
    parser = commands.add_parser("check-config", help="validate a configuration without starting a server",
                                 description="Resolve the configuration as serve does and run its start-up checks; "
                                             "print ok and the non-default values (exit 0), or the reasons (exit 2).")
    configfile.add_argument(parser)
    parser.add_argument("--probe", action="store_true",
                        help="also connect once to the --bus broker (unreachable: a failure here)")
    config.add_arguments(parser)


def add_gen_token(commands: Any) -> None:
    parser = commands.add_parser("gen-token", help="print an HS256 token the server accepts (development, tests)",
                                 description="The secret, audience and issuer default to the configuration's "
                                             "(--config, MILLIONWS_AUTH_JWT_SECRET...).")
    parser.add_argument("--secret", help="HS256 secret (default: auth_jwt_secret of the configuration)")
    parser.add_argument("--sub", help="the user id (sub claim); none: an anonymous connection")
    parser.add_argument("--channels", default="",
                        help="comma-separated channel patterns the token grants, e.g. 'news.*,chat' (default: none)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)")
    parser.add_argument("--aud", help="aud claim (default: auth_audience of the configuration)")
    parser.add_argument("--iss", help="iss claim (default: auth_issuer of the configuration)")
    configfile.add_argument(parser)


def check_config(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        cfg = configfile.load(args)
    except ValueError as exc:
        print(f"millionws: {exc}", file=err)
        return 2
    reasons: list[str] = []
    for check in (check_keys, check_tls, lambda c: _bus(c, args.probe)):
        try:
            check(cfg)
        except StartupError as exc:
            reasons.append(str(exc))
    if reasons:
        for reason in reasons:
            print(f"millionws: {reason}", file=err)
        return 2
    print("ok", file=out)
    for line in non_defaults(cfg):
        print(line, file=out)
    return 0


def _bus(cfg: config.Config, probe: bool) -> None:
    warning = check_bus(cfg, probe)
    if warning:  # serve would start and stay not ready; a probe asked for means the operator wants to know
        raise StartupError(warning)


def non_defaults(cfg: config.Config) -> list[str]:
    """``key = value`` lines (TOML, so they can go into a file) of what differs from a bare ``serve``."""
    bare = config.load(None, {})  # the defaults as serve computes them on this machine (workers, backlog)
    lines = []
    for option in config.OPTIONS:
        value = getattr(cfg, option.name)
        if value == getattr(bare, option.name):
            continue
        if option.name in SECRETS and value is not None:
            value = "<redacted>"
        elif option.name == "bus":
            value = redact(value)
        lines.append(f"{option.name} = {_toml(value)}")
    return lines


def _toml(value: Any) -> str:
    if value is None:  # TOML has no null; only reachable for options a flag unset
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string for what options hold
    return repr(value)


def gen_token(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        print(make_token(args), file=out)
    except ValueError as exc:
        print(f"millionws: gen-token: {exc}", file=err)
        return 2
    return 0


def make_token(args: argparse.Namespace) -> str:
    """The token ``args`` describe; ValueError saying why the server would refuse it."""
    secret, aud, iss = args.secret, args.aud, args.iss
    if secret is None or aud is None or iss is None:  # the configuration fills what the command line left out
        cfg = configfile.load(argparse.Namespace(config=args.config))
        secret = secret if secret is not None else cfg.auth_jwt_secret
        aud = aud if aud is not None else cfg.auth_audience
        iss = iss if iss is not None else cfg.auth_issuer
    if not secret:
        raise ValueError("no secret: give --secret, or auth_jwt_secret in --config or MILLIONWS_AUTH_JWT_SECRET")
    if len(secret) < 16:  # the server refuses to start with such a secret (config.validate)
        raise ValueError("the secret must be at least 16 characters, as the server's --auth-jwt-secret")
    if not 0 < args.ttl < 10 * 365 * 86400:
        raise ValueError("--ttl must be more than 0 and less than ten years of seconds")
    patterns = [p.strip() for p in args.channels.split(",") if p.strip()]
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} channel patterns")
    claims: dict[str, Any] = {"channels": patterns, "exp": int(time.time() + args.ttl) + 1}
    if args.sub is not None:
        claims["sub"] = args.sub
    if aud:
        claims["aud"] = aud
    if iss:
        claims["iss"] = iss
    try:
        identity_of(claims)  # the server's claim rules: sub and pattern alphabets, exp
        token = jwt.encode(claims, secret, algorithm="HS256")
        # The round trip through the server's verifier: what it refuses is never printed.
        Verifier(secret, None, aud or None, iss or None, leeway=0).verify(token)
    except AuthError as exc:
        raise ValueError(exc.message) from None
    return token
