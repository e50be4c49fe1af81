"""Metadata tables: fetched on demand, verified against the manifest hash, stored once in the
content-addressed store and hard-linked into the AllenSDK layout."""

from __future__ import annotations

import io
import os
import stat

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mirror.api import Mirror
from mirror.errors import OfflineError
from mirror.store.layout import CacheLayout
from mirror.hashing import hash_file


def test_table_bytes_are_the_replicas_and_the_view_is_a_readonly_hard_link(cli, replica):
    cli("manifests", "use", "1.0.1")
    cli("tables", "ophys_experiment_table")
    view = cli.cache_dir / "visual-behavior-ophys-1.0.1" / "project_metadata" / "ophys_experiment_table.csv"
    assert view.read_bytes() == replica.tables["1.0.1"]["ophys_experiment_table"]
    digest = hash_file(view).blake2b
    obj = CacheLayout(cli.cache_dir).object_path(digest)
    assert os.stat(view).st_ino == os.stat(obj).st_ino
    assert stat.S_IMODE(os.stat(obj).st_mode) == 0o444


def test_unchanged_table_is_stored_once_across_versions(cli, replica):
    # ophys_cells_table is identical in 1.0.0 and 1.1.0 (it changed in 1.0.1 only)
    assert replica.tables["1.0.0"]["ophys_cells_table"] != replica.tables["1.0.1"]["ophys_cells_table"]
    assert replica.tables["1.0.1"]["ophys_cells_table"] == replica.tables["1.1.0"]["ophys_cells_table"]
    cli("tables", "ophys_cells_table", "--version", "1.0.1")
    cli("tables", "ophys_cells_table", "--version", "1.1.0")
    a = cli.cache_dir / "visual-behavior-ophys-1.0.1" / "project_metadata" / "ophys_cells_table.csv"
    b = cli.cache_dir / "visual-behavior-ophys-1.1.0" / "project_metadata" / "ophys_cells_table.csv"
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 3


def test_summary_of_all_tables(cli, replica):
    d = cli("tables", "--version", "1.0.1", json_out=True).data
    got = {t["table"]: (t["rows"], t["index"]) for t in d["tables"]}
    want_rows = {k: v.count(b"\n") - 1 for k, v in replica.tables["1.0.1"].items()}
    assert got == {
        "behavior_session_table": (want_rows["behavior_session_table"], "behavior_session_id"),
        "ophys_session_table": (want_rows["ophys_session_table"], "ophys_session_id"),
        "ophys_experiment_table": (want_rows["ophys_experiment_table"], "ophys_experiment_id"),
        "ophys_cells_table": (want_rows["ophys_cells_table"], "cell_roi_id"),
    }


def test_csv_and_parquet_output(cli, replica, tmp_path):
    out = tmp_path / "t.parquet"
    cli("tables", "behavior_session_table", "--version", "1.0.0", "--format", "parquet", "--output", str(out))
    table = pq.read_table(out)
    original = pacsv.read_csv(io.BytesIO(replica.tables["1.0.0"]["behavior_session_table"]))
    assert table.num_rows == original.num_rows
    assert table["behavior_session_id"].to_pylist() == original["behavior_session_id"].to_pylist()
    r = cli("tables", "behavior_session_table", "--version", "1.0.0", "--format", "csv")
    again = pacsv.read_csv(io.BytesIO(r.stdout_bytes))
    assert again["behavior_session_id"].to_pylist() == original["behavior_session_id"].to_pylist()


def test_pandas_frames_are_indexed_like_allensdk(sandbox, tmp_path, replica):
    m = Mirror(tmp_path / "c", endpoint_url=sandbox.url)
    m.load_manifest("1.0.1")
    b = m.get_behavior_session_table()
    assert b.index.name == "behavior_session_id"
    with_files = b.dropna(subset=["file_id"])
    assert sorted(with_files.index) == sorted(replica.behavior_ids["1.0.1"])
    e = m.get_ophys_experiment_table()
    assert e.index.name == "ophys_experiment_id" and sorted(e.index) == sorted(replica.experiment_ids["1.0.1"])
    assert m.get_ophys_session_table().index.name == "ophys_session_id"
    assert m.get_ophys_cells_table().index.name == "cell_roi_id"
    # every file_id points at a data file of the manifest
    manifest = m.manifest()
    assert {str(int(f)) for f in with_files["file_id"]} | {str(int(f)) for f in e["file_id"]} == set(manifest.data_files)


def test_a_damaged_store_object_is_fetched_again(cli, replica):
    cli("manifests", "use", "1.0.1")
    cli("tables", "ophys_session_table")
    view = cli.cache_dir / "visual-behavior-ophys-1.0.1" / "project_metadata" / "ophys_session_table.csv"
    obj = CacheLayout(cli.cache_dir).object_path(hash_file(view).blake2b)
    obj.chmod(0o644)
    obj.write_bytes(b"corrupted")
    r = cli("tables", "ophys_session_table", "--format", "csv")
    assert r.stdout_bytes.splitlines()[0] == replica.tables["1.0.1"]["ophys_session_table"].splitlines()[0]
    assert view.read_bytes() == replica.tables["1.0.1"]["ophys_session_table"]
    assert obj.read_bytes() == replica.tables["1.0.1"]["ophys_session_table"]


def test_offline_tables(cli, sandbox, tmp_path):
    cli("manifests", "use", "1.0.1")
    cli("tables", "behavior_session_table")
    d = cli("--offline", "tables", "behavior_session_table", json_out=True).data
    assert d["table"] == "behavior_session_table" and d["rows"] > 0
    r = cli("--offline", "tables", "ophys_cells_table", expect=3)
    assert "metadata table ophys_cells_table of visual-behavior-ophys_project_manifest_v1.0.1.json is not in" in r.stderr
    assert str(cli.cache_dir) in r.stderr
    with pytest.raises(OfflineError):
        Mirror(tmp_path / "empty", offline=True).get_behavior_session_table()


def test_a_table_missing_from_the_version_is_named(cli):
    r = cli("tables", "ophys_cells_table", "--version", "0.3.0", expect=2)
    assert "has no metadata table 'ophys_cells_table'" in r.stderr


def test_tables_follow_the_mirror_link_mode(sandbox, tmp_path, replica):
    """Table views are made by the same linker as data files: with link_mode='copy' they are
    stamped copies, not hard links (tables used to ignore the link mode)."""
    cache = tmp_path / "c"
    with Mirror(cache, endpoint_url=sandbox.url, link_mode="copy") as m:
        m.load_manifest("1.0.1")
        m.get_table("behavior_session_table")
        view = m.table_path("behavior_session_table")
        entry = m.manifest().metadata_files["behavior_session_table"]
    obj = CacheLayout(cache).object_path(entry.file_hash)
    assert view.read_bytes() == obj.read_bytes() == replica.tables["1.0.1"]["behavior_session_table"]
    assert os.stat(view).st_ino != os.stat(obj).st_ino and os.stat(view).st_nlink == 1
    assert not os.stat(view).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
