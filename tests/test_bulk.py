"""Planning a big manifest as columns (mirror/bulk.py) gives the plan the list planner gives:
unit checks on literal local states, then end to end against moto with real files on disk."""

from __future__ import annotations

import json

import pytest
from conftest import manifest_name
from test_columnar import DS, NAME, _h, doc

from mirror import manifest as mf
from mirror.bulk import FetchColumns, TargetTable
from mirror.columnar import EntryColumns
from mirror.model import ObjectInfo, Selection, Shard
from mirror.store.layout import CacheLayout
from mirror.plan import LocalState, PlanInput, make_sync_plan

TOP = "visual-behavior-ophys-1.0.1"


def _table(n=12, mutate=None) -> TargetTable:
    m = mf._parse_columnar(doc(n, mutate=mutate), source=NAME, dataset=DS)
    assert m is not None and isinstance(m.data_files, EntryColumns)
    return TargetTable(m, TOP)


def _plans(table, local, remote=None, *, shard=None):
    """The plan of the table as columns, and of the same targets as a list."""
    remote = remote or {}
    sel = Selection(shard=shard)
    given = PlanInput(("m",), table, local, remote, (TOP,))
    fast = make_sync_plan(given, sel)
    slow = make_sync_plan(PlanInput(("m",), list(table), local, remote, (TOP,)), sel)
    return fast, slow


def assert_same_plan(fast, slow):
    assert tuple(fast.fetch) == tuple(slow.fetch)
    assert fast.link == slow.link and fast.present == slow.present and fast.present_hashes == slow.present_hashes
    assert (fast.present_bytes, fast.replace, fast.remove) == (slow.present_bytes, slow.replace, slow.remove)
    assert fast.summary() == slow.summary() and fast.to_dict() == slow.to_dict()
    assert len(fast.fetch) == len(slow.fetch) and fast.views_total == slow.views_total
    assert [fast.fetch[i] for i in range(len(fast.fetch))] == list(slow.fetch)


def test_a_new_cache_dir_fetches_every_content_once_in_the_list_planners_order():
    table = _table()
    fast, slow = _plans(table, LocalState({}, {}))
    assert isinstance(fast.fetch, FetchColumns) and len(fast.fetch) == 13  # 12 data files and the table
    assert_same_plan(fast, slow)


def test_sizes_from_s3_order_the_fetches_biggest_first_then_by_key():
    table = _table()
    remote = {(t.entry.key, t.entry.version_id): ObjectInfo(t.entry.key, t.entry.version_id, size, f"e{i}")
              for i, (t, size) in enumerate(zip(table, [5, 900, 900, 3, 0, 70, 70, 70, 1, 2]))}
    fast, slow = _plans(table, LocalState({}, {}), remote)
    assert fast.fetch_bytes == slow.fetch_bytes > 0 and fast.unknown_sizes == slow.unknown_sizes == 3
    assert_same_plan(fast, slow)


def test_present_linked_replaced_and_removed_views_as_the_list_planner_decides():
    table = _table()
    ts = list(table)
    objects = {ts[i].entry.file_hash: 100 + i for i in (0, 2, 3, 5, 7)}
    views = {ts[2].view: ts[2].entry.file_hash,  # present
             ts[3].view: None,  # something else there: replaced, then linked
             ts[4].view: ts[2].entry.file_hash,  # another object's view: replaced, then fetched
             ts[5].view: ts[5].entry.file_hash,  # present
             ts[0].view: ts[0].entry.file_hash}  # the metadata table, present
    extra = frozenset({f"{TOP}/stray.nwb", ts[6].view, f"{TOP}/a/b.nwb"})
    fast, slow = _plans(table, LocalState(objects, views, extra))
    assert fast.present and fast.link and fast.replace and fast.remove == (f"{TOP}/a/b.nwb", f"{TOP}/stray.nwb")
    assert_same_plan(fast, slow)


def test_one_content_at_several_keys_is_one_fetch_with_every_view():
    def same_content(d):
        for name in ("3", "7", "9"):
            d["data_files"][name]["file_hash"] = _h(100)
        d["data_files"]["4"]["file_hash"] = _h(101)
        d["data_files"]["11"]["file_hash"] = _h(101)

    table = _table(mutate=same_content)
    fast, slow = _plans(table, LocalState({}, {}))
    assert len(fast.fetch) == 13 - 3 and sorted(len(f.views) for f in fast.fetch)[-2:] == [2, 3]
    assert_same_plan(fast, slow)
    fast, slow = _plans(table, LocalState({_h(101): 5}, {}))  # the shared content in the store: links
    assert_same_plan(fast, slow)


def test_a_table_with_the_content_of_a_data_file_is_fetched_once_for_both():
    def shared(d):
        d["metadata_files"]["ophys_session_table"]["file_hash"] = _h(4)

    fast, slow = _plans(_table(mutate=shared), LocalState({}, {}))
    assert any(len(f.views) == 2 for f in slow.fetch)
    assert_same_plan(fast, slow)


def test_a_shard_of_a_table_is_the_shard_of_the_list():
    table = _table()
    for k in range(3):
        fast, slow = _plans(table, LocalState({}, {}), shard=Shard(k, 3))
        assert tuple(fast.fetch) == tuple(slow.fetch) and tuple(fast.steal) == tuple(slow.steal)


def test_iterating_a_table_gives_the_targets_a_list_holds():
    table = _table(5)
    m = mf._parse_plain(doc(5), source=NAME, dataset=DS)
    from mirror.plan import targets_of

    assert list(table) == targets_of(m, None, TOP) and len(table) == 6
    assert table.target(2) == targets_of(m, None, TOP)[3]


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture
def columns(monkeypatch):
    """Every manifest read as columns, however small."""
    monkeypatch.setattr(mf, "COLUMNAR_MIN_BYTES", 0)


def test_a_sync_with_manifests_read_as_columns_makes_the_same_tree(cli, replica, columns, tmp_path):
    from test_sync import assert_mirror, expected_files

    from mirror.api import Mirror

    v = replica.versions[-1]
    with Mirror(cache_dir=tmp_path / "probe", endpoint_url=cli.endpoint) as mirror:
        assert isinstance(mirror.manifest(v).data_files, EntryColumns)  # the path under test is taken
    cli("sync", "--version", v)
    assert_mirror(cli.cache_dir, replica, v)
    again = json.loads(cli("--json", "sync", "--version", v).stdout.splitlines()[-1])
    assert again["files_fetched"] == 0 and again["files_present"] == len(expected_files(replica, v))


def test_plans_of_a_used_cache_dir_are_the_same_read_as_columns_or_not(cli, replica, monkeypatch):
    """After syncing one version, with a view deleted, one overwritten, a stray file and an
    object removed from the store: the plan of the next version, and of the same one, as JSON."""
    first, second = replica.versions[0], replica.versions[1]  # 0.2.0 keeps most of 0.1.0's content
    cli("sync", "--version", first)
    root = cli.cache_dir / f"visual-behavior-ophys-{first}"
    nwbs = sorted(p for p in root.rglob("*.nwb"))
    nwbs[0].unlink()
    nwbs[1].chmod(0o644)
    nwbs[1].write_bytes(b"not it")
    (root / "behavior_sessions" / "stray.nwb").write_bytes(b"x")
    store = [p for p in CacheLayout(cli.cache_dir).objects.rglob("*") if p.is_file()]
    assert store
    store[0].unlink()
    default = mf.COLUMNAR_MIN_BYTES
    plans = {}
    for threshold in (default, 0):
        monkeypatch.setattr(mf, "COLUMNAR_MIN_BYTES", threshold)
        plans[threshold] = [json.loads(cli("plan", "--version", v, json_out=True).stdout) for v in (first, second)]
    assert plans[0] == plans[default]
    got = plans[0][0]
    assert got["replace"] >= 1 and got["fetch"]["files"] >= 1 and got["present"]["files"] >= 1
    assert got["manifests"] == [manifest_name(first)] and plans[0][1]["link"]["files"] >= 1
