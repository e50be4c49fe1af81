"""The planner as the pure function it is: literal inputs, literal plans; and the range
arithmetic behind resume."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirror.manifest import FileEntry
from mirror.model import ObjectInfo, ObjectRef
from mirror.plan import Fetch, Link, LocalState, Plan, Target, make_plan
from mirror.store.objects import merge_ranges, missing_ranges

H1, H2, H3, H4 = ("1" * 128, "2" * 128, "3" * 128, "4" * 128)


def entry(key: str, h: str, vid: str = "v1") -> FileEntry:
    return FileEntry("data", key.rsplit("_", 1)[-1], f"https://b.s3.amazonaws.com/{key}", "b", key, vid, h)


def target(view: str, key: str, h: str, vid: str = "v1") -> Target:
    return Target(view, entry(key, h, vid))


def test_each_view_is_present_linked_or_fetched_once_per_content():
    targets = [
        target("p-1/a.nwb", "p/a.nwb", H1),  # the view is there and is the object: present
        target("p-1/b.nwb", "p/b.nwb", H2),  # object stored, view missing: link
        target("p-1/c.nwb", "p/c.nwb", H3),  # content not stored: fetch
        target("p-1/d.nwb", "p/d.nwb", H3),  # same content under another key: one fetch, two views
        target("p-1/e.nwb", "p/e.nwb", H4, vid="v9"),  # a view of other content sits there: replace, fetch
        target("p-1/a.nwb", "p/a.nwb", H1),  # a duplicate target counts once
    ]
    local = LocalState(objects={H1: 10, H2: 20}, views={"p-1/a.nwb": H1, "p-1/e.nwb": None},
                       extra_files=frozenset({"p-1/old.nwb", "p-1/a.nwb"}))
    remote = {("p/c.nwb", "v1"): ObjectInfo("p/c.nwb", "v1", 300, "etag-c"),
              ("p/e.nwb", "v9"): ObjectInfo("p/e.nwb", "v9", 400, "etag-e")}
    plan = make_plan(targets, local, remote, manifests=["m1.json"])
    assert plan == Plan(
        manifests=("m1.json",),
        fetch=(Fetch(H4, ObjectRef("b", "p/e.nwb", "v9"), 400, "etag-e", ("p-1/e.nwb",)),  # biggest first
               Fetch(H3, ObjectRef("b", "p/c.nwb", "v1"), 300, "etag-c", ("p-1/c.nwb", "p-1/d.nwb"))),
        link=(Link(H2, "p-1/b.nwb", 20),),
        present=("p-1/a.nwb",),
        present_bytes=10,
        replace=("p-1/e.nwb",),
        remove=("p-1/old.nwb",),  # a wanted view is never removed, even if reported as extra
    )
    assert plan.summary() == {
        "manifests": ["m1.json"],
        "fetch": {"files": 2, "bytes": 700, "unknown_sizes": 0},
        "link": {"files": 2, "bytes": 320},  # b.nwb, and d.nwb sharing c.nwb's fetch
        "present": {"files": 1, "bytes": 10},
        "replace": 1,
        "remove": {"files": 1},
    }
    assert plan.views_total == 5


def test_unknown_sizes_are_kept_unknown_and_ordered_after_known_ones():
    plan = make_plan([target("p-1/x", "p/x", H1), target("p-1/y", "p/y", H2)], LocalState({}, {}),
                     {("p/y", "v1"): ObjectInfo("p/y", "v1", 5, None)})
    assert [(f.ref.key, f.size) for f in plan.fetch] == [("p/y", 5), ("p/x", None)]
    assert plan.unknown_sizes == 1 and plan.fetch_bytes == 5


def test_an_empty_selection_plans_nothing():
    assert make_plan([], LocalState({H1: 1}, {}), {}) == Plan(())


@pytest.mark.parametrize("done,size,missing", [
    ([], 100, [(0, 100)]),
    ([[0, 100]], 100, []),
    ([[0, 10], [20, 30]], 100, [(10, 20), (30, 100)]),
    ([[20, 30], [0, 10]], 100, [(10, 20), (30, 100)]),  # unordered
    ([[0, 50], [40, 60], [60, 70]], 100, [(70, 100)]),  # overlapping and touching
    ([[10, 10], [5, 3]], 20, [(0, 20)]),  # empty and inverted ranges ignored
    ([[0, 150]], 100, []),  # beyond the end
    ([], 0, []),
])
def test_missing_ranges_are_the_complement_of_what_was_written(done, size, missing):
    assert missing_ranges(done, size) == missing


def test_merge_ranges_joins_overlaps_and_neighbours():
    assert merge_ranges([[5, 8], [0, 2], [2, 4], [7, 10]]) == [[0, 4], [5, 10]]


def test_the_planner_loads_no_network_code():
    code = ("import sys, mirror.plan, mirror.upkeep.scan; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'aiobotocore', 'botocore', 'ssl')"
            " or m.startswith('mirror.remote.')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
