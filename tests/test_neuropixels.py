"""Visual Behavior Neuropixels (VBN) from the same tool, against its replica on the sandbox's
server: the behaviour both datasets share is parametrised over both; what only VBN has (LFP
files, file_id -999, a behavior session read from its ecephys session's NWB, AllenSDK's default
filter of abnormal sessions) is tested on VBN alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import Cli
from mirror import Mirror
from mirror.sandbox.replica import payload

VBN = "visual-behavior-neuropixels"
OPHYS = "visual-behavior-ophys"


def expected_files(replica, version: str) -> dict[str, bytes]:
    """view path (relative to cache_dir) → bytes, straight from the replica's generator."""
    root = f"{replica.project}-{version}"
    out = {f"{root}/project_metadata/{t}.csv": body for t, body in replica.tables[version].items()}
    for f in replica.data[version].values():
        out[f"{root}/{f.key.split('/', 1)[1]}"] = payload(f.seed, f.size)
    return out


def assert_mirror(cache_dir: Path, replica, version: str) -> dict[str, bytes]:
    files = expected_files(replica, version)
    for rel, body in files.items():
        path = cache_dir / rel
        assert path.read_bytes() == body, rel
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    top = cache_dir / f"{replica.project}-{version}"
    assert {str(p.relative_to(cache_dir)) for p in top.rglob("*") if p.is_file()} == set(files)
    return files


class DatasetCli(Cli):
    def __init__(self, endpoint: str, cache_dir: Path, dataset: str) -> None:
        super().__init__(endpoint, cache_dir)
        self.dataset = dataset

    def __call__(self, *args: str, **kw):
        return super().__call__("--dataset", self.dataset, *args, **kw)


@pytest.fixture
def vbn(sandbox, vbn_replica, tmp_path):
    return DatasetCli(sandbox.url, tmp_path / "cache", VBN)


@pytest.fixture(params=[OPHYS, VBN])
def case(request, sandbox, tmp_path):
    """(cli, replica, two versions whose data files differ) for each dataset."""
    if request.param == VBN:
        replica = request.getfixturevalue("vbn_replica")
        versions = ("0.3.0", "0.4.0")
    else:
        replica = sandbox.replica
        versions = ("1.0.1", "1.1.0")
    return DatasetCli(sandbox.url, tmp_path / "cache", request.param), replica, versions


# --- what both datasets do alike ------------------------------------------------------------------


def test_manifests_list_and_a_whole_version_synced_byte_for_byte(case):
    cli, replica, (v0, v1) = case
    listed = cli("manifests", "list").stdout.split()
    assert listed == sorted(replica.manifests)
    cli("sync", "--version", v0, "--part-size", "64KiB")
    assert_mirror(cli.cache_dir, replica, v0)
    s = json.loads(cli("--json", "sync", "--version", v0).stdout.splitlines()[-1])
    assert s["files_fetched"] == 0  # a second sync fetches nothing
    cli("verify")


def test_a_second_version_links_what_it_shares_and_fetches_only_the_rest(case):
    cli, replica, (v0, v1) = case
    cli("sync", "--version", v0)
    s = json.loads(cli("--json", "sync", "--version", v1).stdout.splitlines()[-1])
    old, new = expected_files(replica, v0), assert_mirror(cli.cache_dir, replica, v1)
    shared = {body for body in new.values()} & {body for body in old.values()}
    changed = {body for body in new.values()} - shared
    assert s["files_fetched"] == len(changed)
    for rel, body in new.items():  # content in both versions is one inode
        if body in shared:
            twin = next(r for r, b in old.items() if b == body)
            assert os.stat(cli.cache_dir / rel).st_ino == os.stat(cli.cache_dir / twin).st_ino, rel


def test_get_every_kind_fetches_one_file_at_allensdks_path(case):
    cli, replica, (v0, _) = case
    if cli.dataset == OPHYS:
        kinds = [("behavior-session", replica.behavior_ids[v0][0]), ("ophys-experiment", replica.experiment_ids[v0][0])]
    else:
        kinds = [("ecephys-session", replica.ecephys_ids[v0][0]), ("probe-lfp", replica.lfp_probe_ids[v0][0]),
                 ("behavior-session", replica.behavior_only_ids[v0][0])]
    files = expected_files(replica, v0)
    for kind, item in kinds:
        path = Path(cli("get", kind, str(item), "--version", v0).stdout.strip())
        rel = str(path.relative_to(cli.cache_dir))
        assert path.read_bytes() == files[rel], (kind, item)
        assert str(item) in rel or kind == "probe-lfp"  # an LFP NWB is named by its probe's name
    r = cli("get", "no-such-kind", "1", expect=2)
    assert "is not a file kind of" in r.stderr and kinds[0][0] in r.stderr


def test_table_getters_are_the_datasets_own(case):
    cli, replica, (v0, _) = case
    cli("sync", "--version", v0, "--tables-only")
    m = Mirror(cli.cache_dir, dataset=cli.dataset, offline=True)
    names = {OPHYS: ["get_behavior_session_table", "get_ophys_session_table", "get_ophys_experiment_table",
                     "get_ophys_cells_table"],
             VBN: ["get_ecephys_session_table", "get_behavior_session_table", "get_probe_table",
                   "get_channel_table", "get_unit_table"]}[cli.dataset]
    for name in names:
        assert name in dir(m)
        df = getattr(m, name)(version=v0)
        spec = next(t for t in m.dataset.tables.values() if t.getter == name)
        assert df.index.name == spec.index and len(df) > 0
    other = "get_probe_table" if cli.dataset == OPHYS else "get_ophys_session_table"
    with pytest.raises(AttributeError, match="this dataset's table getters"):
        getattr(m, other)


# --- what only VBN has ----------------------------------------------------------------------------


def test_vbn_tables_are_shaped_like_allensdks(vbn, vbn_replica):
    import pandas as pd

    vbn("sync", "--version", "0.4.0", "--tables-only")
    vbn("sync", "--version", "0.5.0", "--tables-only")
    m = Mirror(vbn.cache_dir, dataset=VBN, offline=True)
    raw = pd.read_csv(vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata/ecephys_sessions.csv")
    sessions = m.get_ecephys_session_table(version="0.5.0")
    # AllenSDK's default: sessions with abnormal histology or activity are left out
    normal = raw[raw.abnormal_histology.isna() & raw.abnormal_activity.isna()]
    assert len(normal) < len(raw)
    assert sorted(sessions.index) == sorted(normal.ecephys_session_id)
    assert str(sessions.index.dtype) == "Int64"  # INTEGER_COLUMNS are nullable Int64 in AllenSDK
    for c in ("unit_count", "probe_count", "channel_count", "prior_exposures_to_image_set"):
        assert str(sessions[c].dtype) == "Int64", c
    behavior = m.get_behavior_session_table(version="0.5.0")
    assert str(behavior["ecephys_session_id"].dtype) == "Int64"
    assert behavior["ecephys_session_id"].isna().sum() == len(vbn_replica.behavior_only_ids["0.5.0"])
    probes = m.get_probe_table(version="0.5.0")
    assert probes.index.name == "ecephys_probe_id" and probes["has_lfp_data"].dtype == bool
    assert (probes.loc[~probes.has_lfp_data, "file_id"] == -999).all()
    units = m.get_unit_table(version="0.5.0")
    assert "quality" in units.columns and "quality" not in m.get_unit_table(version="0.4.0").columns
    assert list(units.columns) == list(pd.read_csv(vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata/units.csv",
                                                   nrows=0).columns[1:])


def test_a_behavior_session_recorded_with_neuropixels_is_its_ecephys_sessions_nwb(vbn, vbn_replica):
    """AllenSDK's get_behavior_session(id) of such a session (file_id -999) opens the ecephys
    session's NWB: `get behavior-session` answers the same file."""
    import pandas as pd

    vbn("sync", "--version", "0.5.0", "--tables-only")
    table = pd.read_csv(vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata/behavior_sessions.csv")
    row = table[table.file_id == -999].iloc[0]
    esid = int(row.ecephys_session_id)
    path = Path(vbn("get", "behavior-session", str(int(row.behavior_session_id)), "--version", "0.5.0").stdout.strip())
    assert path.name == f"ecephys_session_{esid}.nwb" and path.is_file()


def test_a_probe_without_lfp_says_so(vbn, vbn_replica):
    import pandas as pd

    vbn("sync", "--version", "0.5.0", "--tables-only")
    probes = pd.read_csv(vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata/probes.csv")
    pid = int(probes[~probes.has_lfp_data].ecephys_probe_id.iloc[0])
    r = vbn("get", "probe-lfp", str(pid), "--version", "0.5.0", expect=2)
    assert "has no NWB file of its own" in r.stderr and "has_lfp_data is False" in r.stderr
    assert "-999" not in r.stderr  # never looked up as a file id


def test_ids_of_an_ecephys_session_pick_its_nwb_and_its_probes_lfp(vbn, vbn_replica, tmp_path):
    esid = vbn_replica.ecephys_ids["0.5.0"][0]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{esid}\n")
    vbn("sync", "--version", "0.5.0", "--ids", str(ids))
    top = vbn.cache_dir / "visual-behavior-neuropixels-0.5.0"
    nwbs = sorted(str(p.relative_to(top)) for p in top.rglob("*.nwb"))
    lfp = [f for f in vbn_replica.data["0.5.0"].values() if f.kind == "lfp" and f"/{esid}/" in f.key]
    assert nwbs == sorted([f"behavior_ecephys_sessions/{esid}/ecephys_session_{esid}.nwb",
                           *(f.key.split("/", 1)[1] for f in lfp)])
    assert len(lfp) >= 2


def test_where_over_vbn_tables_and_a_behavior_sessions_fallback(vbn, vbn_replica):
    import pandas as pd

    r = vbn("--json", "plan", "--version", "0.5.0", "--where", 'session_type.startswith("EPHYS_1")')
    plan = json.loads(r.stdout.splitlines()[-1])
    keys = {f["ref"]["key"] for f in plan["fetch_items"]}
    vbn("sync", "--version", "0.5.0", "--tables-only")
    top = vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata"
    sessions = pd.read_csv(top / "ecephys_sessions.csv")
    want = {f"visual-behavior-neuropixels/behavior_ecephys_sessions/{e}/ecephys_session_{e}.nwb"
            for e in sessions[sessions.session_type.str.startswith("EPHYS_1")].ecephys_session_id}
    assert want and {k for k in keys if k.endswith(".nwb")} == want  # probes have no session_type: no LFP
    # a behavior session recorded with Neuropixels, picked by --where on behavior_sessions only, brings its
    # ecephys session's NWB
    behavior = pd.read_csv(top / "behavior_sessions.csv")
    bsid = int(behavior[behavior.file_id == -999].behavior_session_id.iloc[0])
    r = vbn("--json", "plan", "--version", "0.5.0", "--where", f"behavior_session_id == {bsid} and file_id == -999")
    keys = {f["ref"]["key"] for f in json.loads(r.stdout.splitlines()[-1])["fetch_items"]}
    esid = int(behavior[behavior.behavior_session_id == bsid].ecephys_session_id.iloc[0])
    assert keys == {f"visual-behavior-neuropixels/behavior_ecephys_sessions/{esid}/ecephys_session_{esid}.nwb"}


def test_shards_of_a_vbn_version_fetch_each_object_once(vbn, vbn_replica):
    fetched = 0
    for k in range(3):
        s = json.loads(vbn("--json", "sync", "--version", "0.4.0", "--shard", f"{k}/3").stdout.splitlines()[-1])
        fetched += s["files_fetched"]
    files = assert_mirror(vbn.cache_dir, vbn_replica, "0.4.0")
    assert fetched == len(set(files.values()))
    vbn("verify")


def test_adopt_an_allensdk_vbn_cache(vbn, vbn_replica):
    """AllenSDK's S3CloudCache after 0.3.0 then 0.4.0: real files, absolute symlinks for content
    0.4.0 shares with 0.3.0, _downloaded_data.json. adopt turns it into one store of hard links."""
    root = vbn.cache_dir
    root.mkdir(parents=True)
    record, have = {}, {}
    for v in ("0.3.0", "0.4.0"):
        (root / vbn_replica.manifest_name(v)).write_bytes(vbn_replica.manifests[vbn_replica.manifest_name(v)])
        for rel, body in sorted(expected_files(vbn_replica, v).items()):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if body in have:
                path.symlink_to(have[body].resolve())
                continue
            path.write_bytes(body)
            have[body] = path
            record[str(path.resolve())] = hashlib.blake2b(body).hexdigest()
    (root / "_manifest_last_used.txt").write_text(vbn_replica.manifest_name("0.4.0"))
    (root / "_downloaded_data.json").write_text(json.dumps(record))
    symlinks = [p for p in root.rglob("*") if p.is_symlink()]
    assert symlinks  # LFP and behavior-only NWBs are shared between 0.3.0 and 0.4.0
    vbn("adopt")
    for v in ("0.3.0", "0.4.0"):
        assert_mirror(root, vbn_replica, v)
    assert not [p for p in root.rglob("*") if p.is_symlink()]
    vbn("--offline", "verify")
    s = json.loads(vbn("--json", "sync", "--version", "0.4.0").stdout.splitlines()[-1])
    assert s["files_fetched"] == 0


def test_prune_keeps_what_the_kept_version_shares(vbn, vbn_replica):
    vbn("sync", "--version", "0.3.0")
    vbn("sync", "--version", "0.4.0")
    vbn("manifests", "use", "0.4.0")
    vbn("prune", "--keep", "0.4.0", "--yes")
    assert not (vbn.cache_dir / "visual-behavior-neuropixels-0.3.0").exists()
    assert_mirror(vbn.cache_dir, vbn_replica, "0.4.0")
    vbn("--offline", "verify")


def test_date_text_in_a_table_without_a_date_recipe_is_kept_as_written(vbn, vbn_replica):
    """AllenSDK's VBN tables are plain pd.read_csv: `2020-12-01 12:44:00.000000+00:00` stays that
    text. (Made into typed timestamps and back, it lost its `.000000`: found by make test-allensdk.)"""
    import pandas as pd

    vbn("sync", "--version", "0.5.0", "--tables-only")
    csv = vbn.cache_dir / "visual-behavior-neuropixels-0.5.0/project_metadata/behavior_sessions.csv"
    want = pd.read_csv(csv).set_index("behavior_session_id")["date_of_acquisition"]
    assert want.str.contains(r"\.000000\+").any()  # the replica has such text, as the release does
    got = Mirror(vbn.cache_dir, dataset=VBN, offline=True).get_behavior_session_table(version="0.5.0")
    assert got["date_of_acquisition"].tolist() == want.loc[got.index].tolist()


def test_get_with_a_dataset_that_does_not_load_says_so_without_a_traceback(cli):
    r = cli("--dataset", "nope", "get", "ecephys-session", "1", expect=2)
    assert "unknown dataset 'nope'" in r.stderr and "Traceback" not in r.stderr
