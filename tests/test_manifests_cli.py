"""`vbo-mirror manifests ...` against moto on 127.0.0.1 loaded with the replica."""

from __future__ import annotations


from conftest import manifest_name, tree_files

from mirror.api import Mirror
from mirror.sandbox.replica import VERSIONS


def test_list_is_in_semver_order_and_latest_is_the_maximum(cli):
    r = cli("manifests", "list", cache=False)
    assert r.stdout.splitlines() == [manifest_name(v) for v in VERSIONS]
    assert cli("manifests", "latest", cache=False).stdout.strip() == manifest_name("1.1.0")
    assert cli("manifests", "list", json_out=True, cache=False).data == [manifest_name(v) for v in VERSIONS]


def test_use_downloads_pins_and_warns_when_not_latest(cli, replica):
    r = cli("manifests", "use", "v0.2.0")
    assert r.stdout.strip() == f"using {manifest_name('0.2.0')}"
    assert "version 0.2.0 is in use; the latest is 1.1.0" in r.stderr
    assert "vbo-mirror manifests compare 0.2.0 1.1.0" in r.stderr
    assert max(len(line) for line in r.stderr.splitlines()) < 100  # it was one line of ~400 characters
    # AllenSDK's files: the manifest at the top of cache_dir, the name in _manifest_last_used.txt
    assert (cli.cache_dir / manifest_name("0.2.0")).read_bytes() == replica.manifests[manifest_name("0.2.0")]
    assert (cli.cache_dir / "_manifest_last_used.txt").read_text() == manifest_name("0.2.0")
    assert cli("manifests", "current").stdout.strip() == manifest_name("0.2.0")
    assert cli("manifests", "downloaded").stdout.splitlines() == [manifest_name("0.2.0")]

    r = cli("manifests", "use", "latest")
    assert r.stderr == ""
    assert cli("manifests", "current", json_out=True).data == manifest_name("1.1.0")
    assert cli("manifests", "downloaded").stdout.splitlines() == [manifest_name("0.2.0"), manifest_name("1.1.0")]


def test_current_without_a_pin_says_what_to_do(cli):
    r = cli("manifests", "current", expect=2)
    assert "no manifest is in use" in r.stderr and "manifests use latest" in r.stderr


def test_show_counts_bytes_from_the_listing_and_pipeline(cli, replica):
    s = cli("manifests", "show", "1.0.1", json_out=True).data
    assert s["name"] == manifest_name("1.0.1")
    assert s["metadata_files"] == 4
    assert s["data_files"] == len(replica.data["1.0.1"])
    assert s["data_bytes"] == sum(f.size for f in replica.data["1.0.1"].values())
    assert s["total_bytes"] == replica.total_bytes("1.0.1")
    assert s["unknown_sizes"] == 0
    assert s["data_pipeline"][0]["name"] == "AllenSDK"
    text = cli("manifests", "show", "1.0.1").stdout
    assert "data files" in text and str(len(replica.data["1.0.1"])) in text and "AllenSDK" in text


def test_compare_metadata_only_release(cli):
    out = cli("manifests", "compare", "0.1.0", "0.2.0").stdout
    assert out == (f"Changes going from\n{manifest_name('0.1.0')}\nto\n{manifest_name('0.2.0')}\n\n"
                   "project_metadata/behavior_session_table.csv changed\n"
                   "project_metadata/ophys_experiment_table.csv changed\n"
                   "project_metadata/ophys_session_table.csv changed\n")


def test_compare_json_has_byte_counts(cli, replica):
    d = cli("manifests", "compare", "1.0.1", "1.1.0", json_out=True).data
    n = len(replica.data["1.1.0"])
    assert d["counts"]["changed"] == n + 3  # every NWB, and the three session/experiment tables
    assert d["counts"]["created"] == d["counts"]["deleted"] == 0
    nwb = [c for c in d["changes"] if c["kind"] == "data"]
    assert sum(c["new_bytes"] for c in nwb) == sum(f.size for f in replica.data["1.1.0"].values())
    assert sum(c["old_bytes"] for c in nwb) == sum(f.size for f in replica.data["1.0.1"].values())
    d = cli("manifests", "compare", "0.3.0", "1.0.0", json_out=True).data
    created = [c for c in d["changes"] if c["change"] == "created"]
    added = set(replica.data["1.0.0"]) - set(replica.data["0.3.0"])
    assert len([c for c in created if c["kind"] == "data"]) == len(added)
    assert d["bytes"]["created"] == (sum(replica.data["1.0.0"][f].size for f in added)
                                     + len(replica.tables["1.0.0"]["ophys_cells_table"]))


def test_python_api_uses_allensdk_names(sandbox, tmp_path):
    m = Mirror(tmp_path / "c", endpoint_url=sandbox.url)
    assert m.list_manifest_file_names()[-1] == m.latest_manifest_file() == manifest_name("1.1.0")
    assert m.current_manifest() is None
    assert m.list_all_downloaded_manifests() == []
    manifest = m.load_manifest("latest")
    assert manifest.manifest_version == "1.1.0"
    assert m.current_manifest() == manifest_name("1.1.0")
    assert m.compare_manifests(manifest_name("1.1.0"), "1.1.0") == "The two manifests are equivalent"


def test_offline_works_from_cache_dir_and_names_what_is_missing(cli, sandbox):
    cli("manifests", "use", "1.0.1")
    r = cli("--offline", "manifests", "list")
    assert r.stdout.splitlines() == [manifest_name("1.0.1")]
    s = cli("--offline", "manifests", "show", json_out=True).data
    assert s["name"] == manifest_name("1.0.1") and s["data_files"] > 0
    r = cli("--offline", "manifests", "use", "1.1.0", expect=2)
    assert "unknown dataset version '1.1.0'; available: 1.0.1" in r.stderr


def test_dead_endpoint_message_names_url_timeout_and_remedy(cli, tmp_path):
    r = cli("manifests", "list", endpoint="http://127.0.0.1:9", cache=False, expect=3)
    assert "cannot reach http://127.0.0.1:9" in r.stderr
    assert "connect timeout 10s" in r.stderr
    assert "hint:" in r.stderr and "--offline" in r.stderr


def test_dead_endpoint_serves_the_cache_but_no_list_of_versions_online(cli):
    cli("manifests", "use", "1.0.1")
    cli("tables", "--version", "1.0.1")  # the tables into the cache, online
    r = cli("tables", "--version", "1.0.1", endpoint="http://127.0.0.1:9")
    assert "behavior_session_table" in r.stdout
    # but a list of the versions online is not made of the cache's (issue 17, item 8)
    r = cli("manifests", "list", endpoint="http://127.0.0.1:9", expect=3)
    assert "--offline manifests list" in r.stderr
    r = cli("--offline", "manifests", "list", endpoint="http://127.0.0.1:9")
    assert r.stdout.splitlines() == [manifest_name("1.0.1")]


def test_silent_endpoint_times_out_with_a_clear_message(cli):
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():  # accept connections and never answer
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        r = cli("--read-timeout", "0.3", "manifests", "list", endpoint=url, cache=False, expect=3)
        assert f"no answer from {url} within the read timeout (0.3s)" in r.stderr
        assert "--read-timeout" in r.stderr
    finally:
        stop.set()
        t.join()
        for s in accepted:
            s.close()
        srv.close()


def test_unknown_version_lists_available(cli):
    r = cli("manifests", "use", "9.9.9", expect=2)
    assert "unknown dataset version '9.9.9'; available: 0.1.0, 0.2.0, 0.3.0, 1.0.0, 1.0.1, 1.1.0" in r.stderr
    assert tree_files(cli.cache_dir) == []


def test_no_cache_dir_is_a_clear_error(cli, tmp_path, monkeypatch):
    """Nothing is written anywhere: not in the working directory, not under HOME, not in a
    cache_dir it might have guessed."""
    for d in ("cwd", "home"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VBO_MIRROR_CACHE_DIR", raising=False)
    before = tree_files(tmp_path)
    r = cli("manifests", "use", "latest", cache=False, expect=2)
    assert "no cache directory given" in r.stderr and "VBO_MIRROR_CACHE_DIR" in r.stderr
    assert tree_files(tmp_path) == before == ["cwd", "home"]
