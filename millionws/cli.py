"""Command line: ``millionws serve [flags]``; every flag also reads MILLIONWS_<NAME>."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__, config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millionws", description="A WebSocket server for a million connections.")
    parser.add_argument("--version", action="version", version=f"millionws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the supervisor and its workers")
    config.add_arguments(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args)
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
