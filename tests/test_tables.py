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
from mirror.hashing import hash_file
from mirror.store.layout import CacheLayout


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


# --- pandas frames shaped like AllenSDK 2.16.2's ----------------------------------------------
#
# The expected frame is rebuilt here from the CSV bytes with pandas alone, replaying the steps of
# AllenSDK's BehaviorProjectCloudApi._get_*_table (behavior_project_cloud_api.py): read_csv with
# mouse_id as str, ast.literal_eval on the string cells of its COL_EVAL_LIST, UTC dates, its
# VBO_INTEGER_COLUMNS as "Int64", its VBO_METADATA_COLUMN_ORDER first, set_index. The constants are
# AllenSDK's (allensdk/brain_observatory/ophys/project_constants.py), copied, not imported from
# mirror.tables, so a slip there shows up here.

ALLENSDK_LIST_COLUMNS = ["ophys_experiment_id", "ophys_container_id", "driver_line"]
ALLENSDK_INT_COLUMNS = [
    "session_number", "age_in_days", "prior_exposures_to_image_set", "prior_exposures_to_session_type",
    "prior_exposures_to_omissions", "ophys_session_id", "imaging_plane_group_count", "imaging_plane_group",
    "targeted_areas", "num_depths_per_area", "num_targeted_structures", "cell_specimen_id"]
ALLENSDK_COLUMN_ORDER = [
    "behavior_session_id", "ophys_session_id", "ophys_container_id", "mouse_id", "indicator", "full_genotype",
    "driver_line", "cre_line", "reporter_line", "sex", "age_in_days", "imaging_depth", "targeted_structure",
    "targeted_imaging_depth", "imaging_plane_group_count", "imaging_plane_group", "project_code", "session_type",
    "session_number", "image_set", "behavior_type", "passive", "experience_level", "prior_exposures_to_session_type",
    "prior_exposures_to_image_set", "prior_exposures_to_omissions", "date_of_acquisition", "equipment_name",
    "num_depths_per_area", "ophys_experiment_id", "num_targeted_structures", "published_at", "isi_experiment_id"]
TABLE_INDEX = {"behavior_session_table": "behavior_session_id", "ophys_session_table": "ophys_session_id",
               "ophys_experiment_table": "ophys_experiment_id", "ophys_cells_table": "cell_roi_id"}
GETTERS = {"behavior_session_table": "get_behavior_session_table", "ophys_session_table": "get_ophys_session_table",
           "ophys_experiment_table": "get_ophys_experiment_table", "ophys_cells_table": "get_ophys_cells_table"}


def allensdk_frame(name: str, body: bytes):
    import ast

    import pandas as pd

    cells = name == "ophys_cells_table"
    df = pd.read_csv(io.BytesIO(body), dtype=None if cells else {"mouse_id": str})
    # AllenSDK pins pandas 1.5.3: text columns are object there (pandas 3 reads them as "str")
    for c in df.columns:
        if isinstance(df[c].dtype, pd.StringDtype):
            df[c] = df[c].astype(object)
    for c in ALLENSDK_LIST_COLUMNS:
        if c in df.columns:
            df[c] = [ast.literal_eval(v) if isinstance(v, str) else v for v in df[c]]
    if cells:
        df["cell_specimen_id"] = df["cell_specimen_id"].astype("Int64")
    else:
        df["date_of_acquisition"] = pd.to_datetime(df["date_of_acquisition"], utc=True).dt.as_unit("ns")  # 1.5: ns only
        for c in ALLENSDK_INT_COLUMNS:
            if c in df.columns:
                df[c] = df[c].astype("Int64")
        first = [c for c in ALLENSDK_COLUMN_ORDER if c in df.columns]
        df = df[first + [c for c in df.columns if c not in first]]
    return df.set_index(TABLE_INDEX[name])


@pytest.mark.parametrize("version", ["0.1.0", "1.0.1", "1.1.0"])
def test_pandas_frames_match_allensdks_recipe(sandbox, tmp_path, replica, version):
    import pandas as pd

    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest(version)
        for name, body in replica.tables[version].items():
            got = getattr(m, GETTERS[name])()
            want = allensdk_frame(name, body)
            assert got.index.name == TABLE_INDEX[name]
            assert list(got.columns) == list(want.columns), name
            assert got.index.dtype == want.index.dtype, name
            assert dict(got.dtypes) == dict(want.dtypes), name
            pd.testing.assert_frame_equal(got, want, obj=name)


def test_list_columns_are_python_lists_and_dates_are_utc(sandbox, tmp_path, replica):
    import ast
    import csv

    import pandas as pd

    version = "1.0.1"
    with Mirror(tmp_path / "c", endpoint_url=sandbox.url) as m:
        m.load_manifest(version)
        frames = {name: getattr(m, GETTERS[name])() for name in replica.tables[version]}
    seen_lists = set()
    for name, body in replica.tables[version].items():
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        df = frames[name]
        index = TABLE_INDEX[name]
        assert df.index.name == index and len(df) == len(rows)
        for row in rows:
            got = df.loc[int(row[index])]
            for column in ALLENSDK_LIST_COLUMNS:
                text = row.get(column, "")
                if text.startswith("["):  # a list literal in the CSV: a Python list, elements typed
                    want = ast.literal_eval(text)
                    assert type(got[column]) is list and got[column] == want, (name, column, text)
                    assert [type(x) for x in got[column]] == [type(x) for x in want]
                    seen_lists.add((name, column))
                elif text == "" and column in df.columns:
                    assert pd.isna(got[column])
            if "mouse_id" in row:
                assert got["mouse_id"] == row["mouse_id"]  # text, as AllenSDK's dtype={"mouse_id": str}
            if "date_of_acquisition" in row:
                assert got["date_of_acquisition"] == pd.Timestamp(row["date_of_acquisition"]).tz_convert("UTC")
        if "date_of_acquisition" in df.columns:
            assert str(df["date_of_acquisition"].dtype) == "datetime64[ns, UTC]"
    # the replica has list cells in these columns; the loop above must have met them
    assert {("behavior_session_table", "driver_line"), ("behavior_session_table", "ophys_experiment_id"),
            ("behavior_session_table", "ophys_container_id"), ("ophys_session_table", "ophys_experiment_id"),
            ("ophys_experiment_table", "driver_line")} <= seen_lists
    # nullable ints where AllenSDK has them, plain int64 ids where it does not
    assert str(frames["behavior_session_table"]["ophys_session_id"].dtype) == "Int64"
    assert str(frames["ophys_session_table"].index.dtype) == "Int64"
    assert str(frames["ophys_experiment_table"]["ophys_container_id"].dtype) == "int64"
    assert str(frames["ophys_cells_table"]["cell_specimen_id"].dtype) == "Int64"


@pytest.mark.parametrize("cell", ["['Sst-IRES-Cre'", "Sst-IRES-Cre", "__import__('os').system('true')", "[1, 2"])
def test_a_malformed_list_cell_names_table_column_and_row(cell):
    import pyarrow as pa

    from mirror import tables
    from mirror.errors import InputError

    t = pa.table({"behavior_session_id": [11, 22, 33],
                  "driver_line": ["['Vip-IRES-Cre']", cell, "['Sst-IRES-Cre']"],
                  "date_of_acquisition": ["2019-01-09 13:03:00+00:00"] * 3})
    with pytest.raises(InputError) as e:
        tables.to_pandas(t, index="behavior_session_id")
    msg = str(e.value)
    assert "behavior_session_table" in msg and "'driver_line'" in msg and "data row 2" in msg and "22" in msg


def test_pandas_is_imported_only_when_a_frame_is_asked_for():
    import subprocess
    import sys

    code = "import sys, mirror.tables, mirror.api, mirror.cli; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_table_view_fits_the_terminal_and_columns_can_be_chosen(cli, replica, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    cli("sync", "--version", "1.0.1", "--tables-only")
    r = cli("tables", "ophys_experiment_table", "--version", "1.0.1", "--rows", "5")
    body = [line for line in r.stdout.splitlines() if not line.startswith("[")]
    assert body and max(map(len, body)) <= 80
    assert "columns besides the index ophys_experiment_id: --columns" in r.stdout
    r = cli("tables", "ophys_experiment_table", "--version", "1.0.1", "--columns", "cre_line,imaging_depth")
    assert "cre_line" in r.stdout.splitlines()[0] and "mouse_id" not in r.stdout
    r = cli("tables", "ophys_experiment_table", "--version", "1.0.1", "--columns", "cre_lin", expect=2)
    assert "cre_lin" in r.stderr and "cre_line" in r.stderr


# --- tables exactly as pandas writes them (AllenSDK's were) -------------------------------------


def _pandas_written() -> bytes:
    """Every form a pandas-written metadata CSV holds a column in: an id column with missing
    values as floats and empty cells, a file_id the same, booleans, list columns as quoted
    text, dates with an offset and without, an integer column with NA."""
    import pandas as pd

    df = pd.DataFrame({
        "behavior_session_id": [870987812, 951410079, 1000000001, 1000000002],
        "ophys_session_id": [None, 951410080, None, 951410090],
        "ophys_experiment_id": [None, "[951980471, 951980473]", None, "[1]"],
        "session_number": [None, 1, 3, None],
        "passive": [False, True, False, False],
        "date_of_acquisition": ["2019-05-17 10:35:21.000000+00:00", "2019-09-20 09:45:29.373000-07:00",
                                "2020-01-02 08:00:00", "2021-03-04T05:06:07.123456"],
        "cre_line": ["Sst-IRES-Cre", None, "Vip-IRES-Cre", "Sst-IRES-Cre"],
        "file_id": [1, None, 2, None],
    })
    text = df.to_csv(index=False, lineterminator="\n").encode()
    assert b"951410080.0" in text and b"1.0," in text  # what pandas really writes: floats and empty cells
    return text


def test_a_table_exactly_as_pandas_writes_it_is_read_like_allensdk_reads_it():
    from mirror import select as sel
    from mirror.tables import read_csv, to_pandas

    table = read_csv(_pandas_written(), name="behavior_session_table")
    assert table["ophys_session_id"].to_pylist() == [None, 951410080, None, 951410090]
    assert table["file_id"].to_pylist() == [1, None, 2, None]
    mask = sel.evaluate(sel.parse("ophys_session_id is null and passive == false"), table,
                        table_name="behavior_session_table")
    assert table.filter(mask)["behavior_session_id"].to_pylist() == [870987812, 1000000001]
    df = to_pandas(table, index="behavior_session_id", name="behavior_session_table")
    assert str(df["ophys_session_id"].dtype) == "Int64" and str(df["session_number"].dtype) == "Int64"
    assert str(df["file_id"].dtype) == "float64"  # as pandas.read_csv reads "1.0" (AllenSDK keeps it)
    assert df["ophys_experiment_id"].tolist()[1] == [951980471, 951980473]
    assert df["passive"].dtype == bool
    dates = df["date_of_acquisition"]
    assert str(dates.dtype) == "datetime64[ns, UTC]" and dates.iloc[1].hour == 16  # -07:00 made UTC
    assert dates.iloc[2].hour == 8  # no offset: taken as UTC, as AllenSDK's to_datetime(utc=True) does


@pytest.mark.parametrize("cell,words", [(b"1.5", "'1.5' is not an id"), (b"abc", "'abc' is not an id"),
                                        (b"99999999999999999999", "out of range")])
def test_an_id_that_is_not_a_whole_number_is_named_with_its_column_and_row(cell, words):
    from mirror.errors import InputError
    from mirror.tables import read_csv

    with pytest.raises(InputError) as err:
        read_csv(b"behavior_session_id,file_id\n1,2.0\n3," + cell + b"\n", name="t")
    assert words in str(err.value) and ("file_id" in str(err.value))


def test_the_sandbox_writes_its_tables_as_pandas_does_and_every_reader_takes_them(cli, replica):
    """The replica's behavior table has ids as floats where some are missing (as the real
    one); the API's tables, --where on those columns, and get all work on it."""
    body = replica.tables["1.0.1"]["behavior_session_table"]
    header, first = body.decode().splitlines()[:2]
    column = header.split(",").index("ophys_session_id")
    assert any(line.split(",")[column].endswith(".0") for line in body.decode().splitlines()[1:])
    m = Mirror(cli.cache_dir, endpoint_url=cli.endpoint)
    try:
        df = m.get_behavior_session_table()
    finally:
        m.close()
    assert str(df["ophys_session_id"].dtype) == "Int64"
    plan = cli("plan", "--version", "1.0.1", "--where", "ophys_session_id is null", json_out=True).data
    report = next(iter(plan["selection"].values()))
    assert report["tables"]["behavior_session_table"]["matched"] == len(replica.behavior_ids["1.0.1"]) > 0
    cli("get", "behavior-session", str(replica.behavior_ids["1.0.1"][0]), "--version", "1.0.1")
