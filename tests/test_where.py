"""Selection by metadata (`--where`, `--ids`, `--tables-only`) on plan, sync and urls, checked
against the replica's tables read independently with pandas."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from test_sync import PROJECT, expected_files

VERSION = "1.0.1"


def frames(replica, version=VERSION) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(io.BytesIO(body)) for name, body in replica.tables[version].items()}


def expected_keys(replica, masks: dict[str, pd.Series], version=VERSION) -> set[str]:
    """Data-file keys that the rows under `masks` (table -> boolean Series) carry."""
    keys = set()
    for table, mask in masks.items():
        for fid in frames(replica, version)[table][mask]["file_id"].dropna():
            keys.add(replica.data[version][int(fid)].key)
    return keys


CASES = {
    'cre_line == "Sst-IRES-Cre"': lambda df: df["cre_line"] == "Sst-IRES-Cre",
    'session_type.startswith("OPHYS_1") or cre_line != "Sst-IRES-Cre"':
        lambda df: df["session_type"].fillna("").str.startswith("OPHYS_1") | (df["cre_line"].notna()
                                                                            & (df["cre_line"] != "Sst-IRES-Cre")),
    'project_code in ["VisualBehavior", "VisualBehaviorTask1B"]':
        lambda df: df["project_code"].isin(["VisualBehavior", "VisualBehaviorTask1B"]),
}


@pytest.mark.parametrize("expr", list(CASES))
def test_where_selects_the_files_of_the_matching_rows_in_both_tables(cli, replica, expr):
    df = frames(replica)
    masks = {t: CASES[expr](df[t]) for t in ("behavior_session_table", "ophys_experiment_table")}
    want = expected_keys(replica, masks)
    plan = cli("plan", "--version", VERSION, "--where", expr, json_out=True).data
    got = {f["ref"]["key"] for f in plan["fetch_items"]}
    views = ({v for f in plan["fetch_items"] for v in f["views"]} | {x["view"] for x in plan["link_items"]}
             | set(plan["present_items"]))
    assert got - {k for k in got if k.endswith(".csv")} == want
    # the tables always come along (those read to select are in the store already)
    assert {v.rsplit("/", 1)[-1] for v in views if v.endswith(".csv")} == {f"{t}.csv" for t in replica.tables[VERSION]}
    report = plan["selection"][f"visual-behavior-ophys_project_manifest_v{VERSION}.json"]
    for t, mask in masks.items():
        assert report["tables"][t]["matched"] == int(mask.sum())
        assert report["tables"][t]["rows"] == len(df[t])
    assert plan["remove"]["files"] == 0


def test_imaging_depth_applies_to_the_experiment_table_only(cli, replica):
    df = frames(replica)["ophys_experiment_table"]
    want = expected_keys(replica, {"ophys_experiment_table": df["imaging_depth"] > 200})
    plan = cli("plan", "--version", VERSION, "--where", "imaging_depth > 200", json_out=True).data
    report = next(iter(plan["selection"].values()))
    assert set(report["tables"]) == {"ophys_experiment_table"}  # the session table has no such column
    assert {f["ref"]["key"] for f in plan["fetch_items"] if not f["ref"]["key"].endswith(".csv")} == want


def test_sync_where_fetches_exactly_the_selection_and_keeps_what_else_is_there(cli, replica):
    expr = 'cre_line == "Sst-IRES-Cre"'
    df = frames(replica)
    want = expected_keys(replica, {t: CASES[expr](df[t]) for t in ("behavior_session_table", "ophys_experiment_table")})
    cli("sync", "--version", VERSION, "--where", 'cre_line == "Vip-IRES-Cre"')  # another selection first
    before = {p for p in (cli.cache_dir / f"{PROJECT}-{VERSION}").rglob("*.nwb")}
    assert before
    cli("sync", "--version", VERSION, "--where", expr)
    files = expected_files(replica, VERSION)
    for key in want:
        rel = f"{PROJECT}-{VERSION}/{key.split('/', 1)[1]}"
        assert (cli.cache_dir / rel).read_bytes() == files[rel]
    after = {p for p in (cli.cache_dir / f"{PROJECT}-{VERSION}").rglob("*.nwb")}
    assert before <= after  # a narrower selection removes nothing
    assert {str(p.relative_to(cli.cache_dir)) for p in after - before} <= {
        f"{PROJECT}-{VERSION}/{k.split('/', 1)[1]}" for k in want}


def test_an_empty_selection_and_a_bad_expression(cli, replica):
    plan = cli("plan", "--version", VERSION, "--where", 'cre_line == "no such line"', json_out=True).data
    assert all(f["ref"]["key"].endswith(".csv") for f in plan["fetch_items"])
    assert next(iter(plan["selection"].values()))["files"] == 0
    r = cli("sync", "--version", VERSION, "--where", "imaging_depth = 200", expect=2)
    assert "==" in r.stderr and "Traceback" not in r.stderr
    r = cli("plan", "--version", VERSION, "--where", "cre_lin == 'x'", expect=2)
    assert "cre_lin" in r.stderr and "cre_line" in r.stderr and "columns:" in r.stderr
    r = cli("plan", "--version", VERSION, "--tables-only", "--where", "true", expect=2)
    assert "--tables-only" in r.stderr


def test_ids_of_sessions_pick_their_experiments_and_a_csv_column_is_used(cli, replica, tmp_path):
    df = frames(replica)
    exp = df["ophys_experiment_table"]
    session = int(exp["behavior_session_id"].iloc[0])
    bare = tmp_path / "ids.txt"
    bare.write_text(f"# sessions\n{session}\n\n99999999999\n")
    want = expected_keys(replica, {"ophys_experiment_table": exp["behavior_session_id"] == session,
                                   "behavior_session_table": df["behavior_session_table"]["behavior_session_id"] == session})
    plan = cli("plan", "--version", VERSION, "--ids", str(bare), json_out=True).data
    assert {f["ref"]["key"] for f in plan["fetch_items"] if not f["ref"]["key"].endswith(".csv")} == want
    assert len(want) >= 1
    report = next(iter(plan["selection"].values()))
    assert report["ids"]["not_found"] == 1 and report["ids"]["not_found_first"] == [99999999999]
    text = cli("plan", "--version", VERSION, "--ids", str(bare)).stdout
    assert "1 not found" in text
    csv = tmp_path / "ids.csv"
    picked = exp["ophys_experiment_id"].iloc[:2].tolist()
    csv.write_text("ophys_experiment_id,note\n" + "".join(f"{i},x\n" for i in picked))
    want = expected_keys(replica, {"ophys_experiment_table": exp["ophys_experiment_id"].isin(picked)})
    plan = cli("plan", "--version", VERSION, "--ids", str(csv), json_out=True).data
    assert {f["ref"]["key"] for f in plan["fetch_items"] if not f["ref"]["key"].endswith(".csv")} == want
    bad = tmp_path / "bad.txt"
    bad.write_text("123\nabc\n")
    r = cli("plan", "--version", VERSION, "--ids", str(bad), expect=2)
    assert "bad.txt" in r.stderr and "2" in r.stderr


def test_tables_only_syncs_the_csvs_and_no_data_file(cli, replica):
    cli("sync", "--version", VERSION, "--tables-only")
    root = cli.cache_dir / f"{PROJECT}-{VERSION}"
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == sorted(f"project_metadata/{t}.csv" for t in replica.tables[VERSION])


def test_urls_where_and_shards_of_a_selection(cli, replica):
    expr = 'cre_line == "Sst-IRES-Cre"'
    urls = cli("urls", "--version", VERSION, "--where", expr).stdout.split()
    df = frames(replica)
    want = expected_keys(replica, {t: CASES[expr](df[t]) for t in ("behavior_session_table", "ophys_experiment_table")})
    assert {k for k in want if not any(k in u for u in urls)} == set()
    assert len([u for u in urls if ".nwb" in u]) == len(want)
    parts = [set(cli("urls", "--version", VERSION, "--where", expr, "--shard", f"{k}/2").stdout.split())
             for k in range(2)]
    assert parts[0] | parts[1] == set(urls) and not parts[0] & parts[1]
    data = cli("urls", "--version", VERSION, "--tables-only", json_out=True).data
    assert all(".csv" in u for u in data)
