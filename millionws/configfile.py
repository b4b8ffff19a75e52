"""``--config FILE``: the options of :mod:`millionws.config` read from a TOML file.

Theory of operation: the file is one more source of the same ``OPTIONS`` table, below the
flags and the environment (flag > environment > file > default), so an operator can keep a
deployment's settings in one reviewed file and still override one of them for a run.

* Keys are the option names exactly as ``config.OPTIONS`` spells them: snake_case
  (``max_connections``), the spelling of the environment variables without their prefix.
  The flags' kebab-case spelling is refused with a line that names the snake_case key, so a
  file never holds the same option under two names.
* Values are typed: an int option takes a TOML integer, a float option an integer or a float,
  a bool option a boolean, a str option a string.  A wrong type, an unknown key (with the
  nearest real one suggested), a missing, unreadable or invalid file each stop the server with
  one line naming the file and the key.
* ``channel_options`` may be the string of ``--channel-options`` or a table of rules,
  ``[channel_options."chat:*"]`` with snake_case keys (``replay_messages = 200``), turned
  into that string; :mod:`millionws.namespaces` then checks the values as for the flag.
* The file itself is named by ``--config`` or ``MILLIONWS_CONFIG``; it is not an option of
  the table (a file cannot name another file).
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from . import config
from .namespaces import KEYS as CHANNEL_KEYS

ENV = "MILLIONWS_CONFIG"
_OPTIONS = {option.name: option for option in config.OPTIONS}


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"TOML file of options (snake_case keys); flags and environment override it [env {ENV}]")


def path_of(args: argparse.Namespace | None, environ: Mapping[str, str]) -> str | None:
    """The configuration file ``--config`` or ``MILLIONWS_CONFIG`` names, else None."""
    path = getattr(args, "config", None) if args is not None else None
    return path or environ.get(ENV) or None


def read(path: str) -> dict[str, Any]:
    """The options ``path`` sets, by option name, typed; ValueError (one line, naming the file) otherwise."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise _error(path, f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(path, f"not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        option = _OPTIONS.get(key)
        if option is None:
            raise _error(path, _unknown(key, _OPTIONS))
        if key == "channel_options" and isinstance(value, dict):
            value = _channel_rules(path, value)
        values[key] = _typed(path, option, value)
    return values


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> config.Config:
    """:func:`config.load` with the file of ``--config``/``MILLIONWS_CONFIG`` below flags and environment."""
    environ = os.environ if environ is None else environ
    path = path_of(args, environ)
    return config.load(args, environ, read(path) if path else None)


def _unknown(key: str, known: Mapping[str, Any] | tuple[str, ...]) -> str:
    snake = key.replace("-", "_")
    if snake != key and snake in known:
        return f"{key!r} is spelled {snake!r} in a configuration file (snake_case, as the environment variables)"
    close = difflib.get_close_matches(snake, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


def _typed(path: str, option: config.Option, value: Any) -> Any:
    """``value`` as ``option``'s type, when TOML's type says the same thing; ValueError naming the key else."""
    kind = option.type
    # bool is a subclass of int in Python: check it first so "workers = true" is refused.
    if kind is bool and type(value) is bool:
        return value
    if kind is int and type(value) is int:
        return value
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind is str and type(value) is str:
        return value
    wanted = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}[kind]
    raise _error(path, f"{option.name} must be {wanted}, not {_toml_type(value)} {value!r}")


def _error(path: str, message: str) -> ValueError:
    return ValueError(f"--config {path}: {message}")


def _toml_type(value: Any) -> str:
    if type(value) is bool:
        return "a boolean"
    return {int: "an integer", float: "a float", str: "a string", dict: "a table", list: "an array"}.get(
        type(value), type(value).__name__)


_RULE_KEYS = {key.replace("-", "_"): key for key in CHANNEL_KEYS}


def _channel_rules(path: str, table: dict[str, Any]) -> str:
    """``[channel_options."chat:*"] presence = true`` as the ``--channel-options`` string it means."""
    rules = []
    for pattern, options in table.items():
        if not pattern or any(c.isspace() or c in ";=" for c in pattern):
            raise _error(path, f"channel_options: {pattern!r} is not a pattern (a channel name, or a prefix "
                               "ending in *)")
        if not isinstance(options, dict):
            raise _error(path, f'channel_options."{pattern}" must be a table of options, not {_toml_type(options)}')
        words = [pattern]
        for key, value in options.items():
            rule_key = _RULE_KEYS.get(key)
            if rule_key is None:
                where = f'channel_options."{pattern}"'
                raise _error(path, f"{where}: {_unknown(key, tuple(_RULE_KEYS))}")
            if type(value) is bool:
                text = "on" if value else "off"
            elif type(value) in (int, float, str) and str(value) and not any(c.isspace() or c == ";"
                                                                             for c in str(value)):
                text = str(value)
            else:
                raise _error(path, f'channel_options."{pattern}".{key} must be a boolean, a number or a word, '
                                   f"not {_toml_type(value)} {value!r}")
            words.append(f"{rule_key}={text}")
        rules.append(" ".join(words))
    return "; ".join(rules)
