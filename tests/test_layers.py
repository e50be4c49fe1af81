"""The rooms of mirror/ and who may import whom, checked on the source (scripts/import_graph.py),
so a shortcut across a boundary fails here rather than in a review. No server."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("import_graph", Path(__file__).parent.parent / "scripts" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = graph
_spec.loader.exec_module(graph)

EDGES = graph.edges()
RUNNING = {m: {t for t, k in ts.items() if k != "typing"} for m, ts in EDGES.items()}


def _room(module: str) -> str:
    return module.split(".", 1)[0]


def test_no_import_cycles():
    assert graph.cycles(RUNNING) == []


@pytest.mark.parametrize("room, allowed", [
    ("store", {"errors", "hashing"}),  # bytes and names: nothing above it
    ("remote", {"errors", "model", "limits"}),  # the only HTTP, and nothing of the disk
    ("plan", {"manifest", "model"}),  # pure: no I/O module at all
])
def test_a_room_imports_only_itself_and_what_is_below_it(room, allowed):
    crossing = {(m, t) for m, ts in RUNNING.items() if _room(m) == room
                for t in ts if _room(t) != room and t not in allowed}
    assert crossing == set()


def test_the_graph_is_read_from_the_source():
    """The checks above would pass on an empty graph: make sure it holds the edges we know."""
    assert {"versions", "gather", "plan", "engine.sync"} <= RUNNING["session"]
    assert "store.facade" in RUNNING["engine.sync"] and "remote.client" in RUNNING["remote"]
    assert graph.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_only_the_cli_imports_the_cli_and_only_api_and_cli_the_session():
    assert {m for m, ts in RUNNING.items() if any(_room(t) == "cli" for t in ts) and _room(m) != "cli"} == set()
    assert {m for m, ts in RUNNING.items() if "session" in ts} == {"api"}
