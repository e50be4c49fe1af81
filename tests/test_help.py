"""`--help` everywhere: every command has a summary that is not cut short, every option says
what it does. (How fast --help answers is measured in benchmarks/, not here.)"""

from __future__ import annotations

import click
from click.testing import CliRunner

from mirror.cli import main


def commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))


def test_every_option_has_help_and_no_summary_is_cut():
    missing = [(path, p.opts) for path, cmd in commands(main) for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not p.help]
    missing += [((), p.opts) for p in main.params if isinstance(p, click.Option) and not p.help
                and p.name not in ("version",)]
    assert not missing, missing
    for path, cmd in [((), main), *commands(main)]:
        if isinstance(cmd, click.Group):
            out = CliRunner().invoke(main, [*path, "--help"], terminal_width=80).output
            listing = out.split("Commands:", 1)[1]
            assert "..." not in listing, (path, listing)
