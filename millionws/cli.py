"""Command line: ``millionws serve|check-config|gen-token [flags]``.

Every option flag also reads MILLIONWS_<NAME>, and ``--config FILE`` (or MILLIONWS_CONFIG) a TOML
file below both (:mod:`millionws.configfile`).  The operator commands live in :mod:`millionws.tools`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, config, configfile, tools


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millionws", description="A WebSocket server for a million connections.")
    parser.add_argument("--version", action="version", version=f"millionws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the supervisor and its workers")
    configfile.add_argument(serve)
    config.add_arguments(serve)
    tools.add_check_config(commands)
    tools.add_gen_token(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return tools.check_config(args) if args.command == "check-config" else tools.gen_token(args)
    try:
        settings = configfile.load(args)
    except ValueError as exc:
        print(f"millionws: {exc}", file=sys.stderr)
        return 2
    from .server.supervisor import StartupError, serve

    try:
        return serve(settings)
    except StartupError as exc:
        print(f"millionws: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"millionws: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
