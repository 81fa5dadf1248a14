"""``edgesr <command> key=value ...``: the command line.

Every argument after the command is a ``key=value`` override of the command's typed config (dotted
keys reach nested sections). User errors (an unknown key, a bad value, a corrupt file) print one
message and exit with status 2; set ``EDGESR_DEBUG=1`` to see the traceback as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesr import __version__
from edgesr.commands import COMMANDS, Command
from edgesr.config import describe, parse_overrides
from edgesr.errors import ConfigError, EdgesrError

USAGE = "usage: edgesr <command> [key=value ...]   (edgesr <command> --help lists the keys)"


def _print_overview(console: Console) -> None:
    console.print(
        f"edgesr {__version__}: medical image SR and MRI reconstruction for the console and the edge\n"
    )
    console.print(escape(USAGE) + "\n")
    table = Table(show_header=True, box=None)
    table.add_column("command")
    table.add_column("what it does")
    for command in COMMANDS.values():
        later = f"  [dim](arrives with {command.arrives_with})[/]" if command.run is None else ""
        table.add_row(command.name, command.summary + later)
    console.print(table)


def _print_command_help(console: Console, command: Command) -> None:
    console.print(f"edgesr {command.name}: {command.summary}\n")
    if command.config is None:
        console.print(f"Not available yet: arrives with {command.arrives_with}.")
        return
    table = Table(show_header=True, box=None)
    for column in ("key", "type", "default", "help"):
        table.add_column(column)
    for row in describe(command.config):
        table.add_row(row.key, escape(row.type), escape(repr(row.default)), escape(row.help))
    console.print(table)
    console.print(f"\nexample: edgesr {command.name} {describe(command.config)[0].key}=...")


def _find_command(argv: Sequence[str]) -> tuple[Command, list[str]]:
    """The longest command name at the start of ``argv`` (``data prepare`` before ``data``)."""
    words = [a for a in argv if "=" not in a and not a.startswith("-")]
    for length in (2, 1):
        name = " ".join(words[:length])
        if len(words) >= length and name in COMMANDS:
            rest = list(argv)
            for word in words[:length]:
                rest.remove(word)
            return COMMANDS[name], rest
    given = " ".join(words[:2]) or (argv[0] if argv else "")
    groups = sorted({name.split()[0] for name in COMMANDS if " " in name})
    if words and words[0] in groups:
        subs = [n for n in COMMANDS if n.startswith(words[0] + " ")]
        raise ConfigError(f"'{given}' needs a subcommand: {', '.join(subs)}")
    close = difflib.get_close_matches(given, list(COMMANDS), n=1, cutoff=0.4)
    hint = f"; did you mean '{close[0]}'?" if close else f"; commands: {', '.join(COMMANDS)}"
    raise ConfigError(f"unknown command '{given}'{hint}")


def _parse(config: type, arguments: list[str]) -> Any:
    """The command's config from its ``key=value`` arguments. A command whose config has an
    ``overrides`` field (``compress``) passes every key that is not its own on, to its recipe."""
    names = {f.name for f in dataclasses.fields(config)}
    if "overrides" not in names:
        return parse_overrides(config, arguments)
    own = [a for a in arguments if a.partition("=")[0].strip() in names - {"overrides"}]
    passed_on = tuple(a for a in arguments if a not in own)
    return dataclasses.replace(parse_overrides(config, own), overrides=passed_on)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    err = Console(stderr=True)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_overview(console)
        return 0
    if argv[0] in ("-V", "--version"):
        console.print(f"edgesr {__version__}")
        return 0
    try:
        command, rest = _find_command(argv)
        if any(a in ("-h", "--help") for a in rest):
            _print_command_help(console, command)
            return 0
        flags = [a for a in rest if a.startswith("-")]
        if flags:
            raise ConfigError(f"unknown option {flags[0]}; edgesr takes key=value arguments ({USAGE})")
        if command.run is None or command.config is None:
            raise EdgesrError(
                f"'edgesr {command.name}' is not available yet: it arrives with {command.arrives_with}"
            )
        cfg: Any = _parse(command.config, rest)
        return command.run(cfg)
    except EdgesrError as exc:
        if os.environ.get("EDGESR_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
