"""What a user meets, round two (issue 17): each point as it was tried."""

from __future__ import annotations

import json

from test_sync import PROJECT, assert_mirror


def test_looking_at_a_table_of_another_version_is_not_wanting_its_data(cli, replica):
    """manifests use 1.0.1, a look at a 1.1.0 table, sync, verify: clean (it reported 24
    missing views, and --repair fetched all of 1.1.0)."""
    cli("manifests", "use", "1.0.1")
    cli("tables", "--version", "1.1.0", "behavior_session_table")
    cli("sync")
    r = cli("verify")
    assert r.stdout.strip().endswith("ok") and "MISSING" not in r.stdout
    r = cli("--json", "verify", "--repair")
    assert json.loads(r.stdout)["ok"] is True
    assert not list((cli.cache_dir / f"{PROJECT}-1.1.0").rglob("*.nwb"))  # nothing of 1.1.0 fetched


def test_a_repair_that_would_fetch_content_never_stored_asks_first(cli, replica):
    """A version wanted whole whose content is not in the store (its record says so, its
    objects are gone): verify says the content is not stored, and --repair fetches it only
    with --yes (a terminal would be asked)."""
    import shutil

    cli("sync", "--version", "1.0.1")
    views = sorted((cli.cache_dir / f"{PROJECT}-1.0.1").rglob("*.nwb"))
    for v in views:
        v.unlink()
    shutil.rmtree(cli.cache_dir / ".vbo-mirror" / "objects-v1")  # and the store with them
    r = cli("verify", expect=5)
    assert "its content is not in the store: --repair fetches it" in r.stdout
    r = cli("verify", "--repair", expect=5)
    assert "not fetched" in r.stdout and "--yes" in r.stdout
    assert not any(v.exists() for v in views)
    cli("verify", "--repair", "--yes")
    assert_mirror(cli.cache_dir, replica, "1.0.1")
    assert cli("verify").stdout.strip().endswith("ok")


def test_a_missing_view_whose_content_is_stored_says_so_and_is_relinked_without_asking(cli, replica):
    cli("sync", "--version", "1.0.1")
    victim = next((cli.cache_dir / f"{PROJECT}-1.0.1").rglob("*.nwb"))
    victim.unlink()
    r = cli("verify", expect=5)
    assert "its content is in the store: --repair relinks it" in r.stdout
    cli("verify", "--repair")
    assert_mirror(cli.cache_dir, replica, "1.0.1")


def test_a_mistyped_cache_dir_is_not_a_healthy_empty_mirror(cli, tmp_path):
    for where in (tmp_path / "no-such-dir", tmp_path):
        for command in (["status"], ["verify"], ["verify", "--fast"]):
            r = cli("--cache-dir", str(where), *command, cache=False, expect=2)
            assert str(where) in r.stderr and ("does not exist" in r.stderr or "holds no mirror" in r.stderr)
    cli("sync", "--version", "1.0.1")
    assert cli("status").exit_code == 0 and cli("verify").stdout.strip().endswith("ok")


def test_a_dry_run_prune_shows_what_would_go_and_what_the_real_one_would_refuse(cli, replica):
    cli("sync", "--version", "1.0.1")
    cli("sync", "--version", "1.1.0")
    cli("manifests", "use", "1.0.1")
    before = sorted(p.name for p in cli.cache_dir.rglob("*"))
    r = cli("prune", "--keep", "1.1.0", "--dry-run")  # it refused, exit 2, showing nothing
    assert "would free" in r.stdout and "1.0.1" in r.stdout
    assert "the real prune would refuse" in r.stdout and "current version 1.0.1" in r.stdout
    assert sorted(p.name for p in cli.cache_dir.rglob("*")) == before
    r = cli("prune", "--keep", "1.1.0", "--yes", expect=2)
    assert "current" in r.stderr


def test_manifests_list_against_a_dead_endpoint_does_not_pass_the_cache_off_as_online(cli, replica):
    from test_ux import _dead_endpoint

    cli("sync", "--version", "1.0.1")
    dead = ["--endpoint-url", _dead_endpoint(), "--connect-timeout", "1"]
    r = cli(*dead, "manifests", "list", expect=3, endpoint=None)
    assert "cannot list the versions online" in r.stderr and "--offline manifests list" in r.stderr
    assert r.stdout == ""
    r = cli(*dead, "--offline", "manifests", "list", endpoint=None)
    assert "v1.0.1" in r.stdout


def test_the_small_things_of_round_two(cli, replica, tmp_path):
    """Item 10: each as it was tried."""
    # `tables` on a cache_dir with no version in use says which one it took
    assert "no manifest is in use" in cli("manifests", "current", expect=2).stderr
    r = cli("tables")
    assert "no version was in use" in r.stderr and "using the latest, 1.1.0" in r.stderr
    # the summary and the table view count columns the same way (besides the index)
    summary = next(line for line in r.stdout.splitlines() if "behavior_session_table" in line)
    columns = int(summary.split("rows")[1].split("columns")[0])
    view = cli("tables", "behavior_session_table", "--columns", "cre_line").stdout
    assert "index behavior_session_id" in summary
    df_columns = len(replica.tables["1.1.0"]["behavior_session_table"].decode().splitlines()[0].split(",")) - 1
    assert columns == df_columns and "cre_line" in view
    # --ids with --where: the plan says rows must match both
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(map(str, replica.behavior_ids["1.0.1"][:3])) + "\n")
    r = cli("plan", "--version", "1.0.1", "--ids", str(ids), "--where", 'cre_line != "x"')
    assert "(rows matching both);" in r.stdout
    # a CSV without an id column: plain English
    bad = tmp_path / "bad.csv"
    bad.write_text("experiment\n1\n")
    r = cli("plan", "--version", "1.0.1", "--ids", str(bad), expect=2)
    assert "has a experiment" not in r.stderr and "Traceback" not in r.stderr
    # an unquoted text value: the hint says to quote it
    r = cli("plan", "--version", "1.0.1", "--where", "cre_line == Sst-IRES-Cre", expect=2)
    assert 'cre_line == "Sst-IRES-Cre"' in r.stderr and "quotes" in r.stderr
    r = cli("plan", "--version", "1.0.1", "--where", "cre_line == Sst", expect=2)
    assert 'cre_line == "Sst"' in r.stderr
