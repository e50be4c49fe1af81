"""The README's commands, as written, against the sandbox (issue 17, item 4): every
`vbo-mirror ...` line of its shell blocks, in order, in one cache_dir, with the shell variables
the blocks set; and its Python block. What cannot run here says so in the README itself
(`adopt` of your own AllenSDK cache, Slurm's `sbatch`, `pip`, `make`): those are the only
lines left out, and the test checks that it left out no other."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import Cli

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_HERE = ("sbatch", "pip", "make", "jid=$(", "      ", "configs/slurm")  # Slurm and installs: make test-slurm


def _blocks(lang: str) -> list[list[str]]:
    out, block, inside = [], [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            if inside is None:
                inside = line[3:].strip()
                block = []
            else:
                if inside == lang:
                    out.append(block)
                inside = None
            continue
        if inside is not None:
            block.append(line)
    return out


def _commands() -> list[tuple[str, list[str]]]:
    """(the README line, its argv after `vbo-mirror`), shell variables expanded."""
    env: dict[str, str] = {"USER": "me"}
    out = []
    for block in _blocks("sh"):
        for line in block:
            if line.lstrip().startswith(("#", *NOT_HERE)) or line.startswith(NOT_HERE):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise AssertionError(f"not a shell line: {line}") from exc
            if not words:
                continue
            if words[0] == "export":
                words = words[1:]
            if len(words) == 1 and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                name, _, value = words[0].partition("=")
                env[name] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value)
                continue
            if words[0] != "vbo-mirror":
                continue
            expanded = re.sub(r'"?\$(\w+)"?', lambda m: shlex.quote(env.get(m.group(1), "")), line)
            argv = shlex.split(expanded, comments=True)
            if ">" in argv:  # `> urls.txt`: stdout is the test's
                argv = argv[:argv.index(">")]
            out.append((line, argv[1:]))
    return out


def test_every_command_line_of_the_readme_is_run_or_says_why_not():
    commands = _commands()
    ran = {line for line, _ in commands}
    for block in _blocks("sh"):
        for line in block:
            if line.startswith("vbo-mirror") and line not in ran:
                pytest.fail(f"a README command this test does not run: {line}")
    assert len(commands) > 30


def test_the_readme_commands_run_against_the_sandbox_as_written(sandbox, vbn_replica, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # -o sessions.csv, --plot bench.png land here
    cli = Cli(sandbox.url, tmp_path / "cache")
    for line, argv in _commands():
        if argv[:1] == ["adopt"]:  # your own AllenSDK cache: the README says so; here, a tree of ours
            argv = ["adopt", str(tmp_path / "cache")]
        # a second cache_dir of the README's (/data/vbn): here, one under tmp_path
        argv = [str(tmp_path / a[len("/data/"):]) if a.startswith("/data/") else a for a in argv]
        r = cli(*argv, expect=None)
        assert r.exit_code == 0, f"{line}\nexit {r.exit_code}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, line
    assert (tmp_path / "sessions.csv").stat().st_size > 0 and (tmp_path / "cells.parquet").stat().st_size > 0
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_the_readme_hpc_selection_is_not_empty_on_the_sandbox(sandbox, tmp_path):
    argv = next(argv for _, argv in _commands() if argv[:1] == ["plan"] and "--where" in argv and "--shard" not in argv)
    assert argv[argv.index("--where") + 1].startswith('cre_line == "Sst-IRES-Cre"')
    r = Cli(sandbox.url, tmp_path / "cache")(*argv, json_out=True)
    report = next(iter(r.data["selection"].values()))
    assert report["files"] > 0  # W selected 0 rows in the sandbox


def test_the_readme_python_runs_against_the_sandbox(sandbox, tmp_path, monkeypatch):
    (code,) = _blocks("python")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sandbox.url)
    source = "\n".join(code).replace('"/data/vbo"', repr(str(tmp_path / "py")))
    assert str(tmp_path) in source
    namespace: dict = {}
    exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["path"].exists() and len(namespace["sessions"]) > 0
    assert os.path.isdir(tmp_path / "py")
