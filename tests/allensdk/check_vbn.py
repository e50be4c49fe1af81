"""`make test-allensdk`, the Visual Behavior Neuropixels (VBN) half: AllenSDK 2.16.2's
VisualBehaviorNeuropixelsProjectCache on trees `vbo-mirror --dataset visual-behavior-neuropixels`
made, against the sandbox's VBN replica (mirror/sandbox/neuropixels.py).

    .venv/bin/python tests/allensdk/check_vbn.py [--allensdk-python .venv-allensdk/bin/python]
        [--vbn-versions 0.4.0 0.5.0] [--keep] [--workdir DIR] [--report FILE.json]

The Ophys half (check_allensdk.py) is the model: the same two venvs, the same Run (subprocesses,
logs, the environment that points AllenSDK's boto3 at the sandbox), Check, render, the same
comparison of DataFrame descriptions (describe_frame / compare_descriptions) and the same counting
proxy; they are imported from it and from allensdk_side.py, and vbn_side.py is the AllenSDK side.
check_allensdk.py's flags are all accepted, so one ALLENSDK_ARGS serves both: --versions names
Ophys versions and is ignored here (--vbn-versions is this check's), --workdir DIR puts this
check's work in DIR/vbn, --report FILE writes FILE-vbn.json.

Checks (each PASS / FAIL in the summary; the exit status is 1 if any is FAIL):
 1. from_local_cache on a tree synced by `vbo-mirror --dataset visual-behavior-neuropixels sync
    --version V` (each of --vbn-versions), run after the sandbox is stopped, with
    AWS_ENDPOINT_URL_S3 on the dead port and every socket connect refused: the current manifest is
    vbo-mirror's; each version loads with its five tables; every file of the manifest (tables,
    session, LFP and behavior-only NWBs) is a regular file at AllenSDK's path with the manifest's
    BLAKE2b, checked before AllenSDK's cache exists (it would link a missing file to a copy
    _downloaded_data.json lists); every ecephys session resolves through get_ecephys_session (its
    NWB reader stubbed) to its file, and each LFP probe's probe_meta[..].lfp_csd_filepath() to its
    file; every behavior session through get_behavior_session (file_id -999: its ecephys session's
    NWB); AllenSDK creates nothing in the tree.
 2. The five tables of each version, AllenSDK's get_ecephys_session_table() (default
    filter_abnormalities=True), get_behavior_session_table(), get_probe_table(),
    get_channel_table(), get_unit_table() against vbo-mirror's Mirror(tree,
    dataset="visual-behavior-neuropixels", offline=True) getters of the same names: index name and
    dtype, columns and their order (AllenSDK keeps the CSV's), dtypes, Python types in object
    columns, and every value.
 3. from_s3_cache on a vbo-mirror tree with the synced versions, through a counting proxy: loading
    them, the table getters, the session / LFP / behavior-session resolution and download_data /
    download_metadata of every file GET no table or NWB (the tree holds them all), and link none.
 4. compare_manifests of AllenSDK for every ordered pair of the replica's manifests against
    `vbo-mirror --dataset visual-behavior-neuropixels manifests compare A B`: equal text.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]

from check_allensdk import (Check, Run, _classify, allensdk_version, both_sides_offline, check_compare,
                            compare_tables, run_checks)
from vbn_side import BUCKET, PROJECT, TABLES, manifest_name

from mirror.sandbox import ReplicaSpec, Sandbox

DATASET = "visual-behavior-neuropixels"
# Small for moto (as the Ophys check's): ~0.6-1.2 MB per session or LFP NWB, ~11 MB per version.
SPEC = ReplicaSpec(seed=7, scale=1 / 4000, part_size=64 << 10, multipart_threshold=128 << 10)


class VbnRun(Run):
    """check_allensdk's Run, for the VBN dataset: vbo-mirror with --dataset, vbn_side.py for AllenSDK."""

    side = "vbn_side.py"
    prefix = "vbn"
    dataset = DATASET


def _kind(url: str) -> str:
    """session / LFP / behavior-only, from a data file's key."""
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if name.startswith("ecephys_session_"):
        return "session"
    if name.endswith("_lfp.nwb"):
        return "LFP"
    if name.startswith("behavior_session_"):
        return "behavior-only"
    return "other"


# --- checks 1 and 2: from_local_cache and the tables, offline -----------------------------------------


def check_local(run: VbnRun, tree: Path, dead_endpoint: str, versions: list[str]) -> tuple[Check, Check]:
    c1 = Check("1", "VBN from_local_cache on a vbo-mirror tree, offline")
    c2 = Check("2", "VBN get_*_table(): AllenSDK vs vbo-mirror")
    side, ours, manifests = both_sides_offline(run, tree, dead_endpoint, versions, TABLES, c1, c2,
                                               manifest_name=manifest_name, dataset=DATASET)
    for v in versions:
        sv = side["versions"][v]
        for line in sv["problems"]:
            c1.fail(f"{v}: {line}")
        if "error" in sv:
            c1.fail(f"{v}: {sv['error']}")
            continue
        if sv.get("loaded") != manifest_name(v):
            c1.fail(f"{v}: AllenSDK loaded {sv.get('loaded')}")
        n_meta, n_data = len(manifests[v].metadata_files), len(manifests[v].data_files)
        files = sv.get("files", {})
        data = {k: f for k, f in files.items() if k.startswith("data:")}
        if len(files) != n_meta + n_data or len(data) != n_data:
            c1.fail(f"{v}: AllenSDK's Manifest has {len(files) - len(data)} tables and {len(data)} data files, "
                    f"vbo-mirror's {n_meta} and {n_data}")
        ok = {k: f for k, f in files.items() if f["is_file"] and not f["symlink"] and f["hash_ok"]}
        kinds: dict[str, list[int]] = {}
        for k, f in data.items():
            counts = kinds.setdefault(_kind(f["url"]), [0, 0])
            counts[0] += k in ok
            counts[1] += 1
        tables = sv["tables"]
        rows = {t: tables[t]["rows"] for t in TABLES}
        lfp_probes = sum(bool(x) for x in tables["probe_table"]["values"]["has_lfp_data"])
        res = sv["resolved"]
        expect = {"ecephys_session": sv["all_ecephys_sessions"], "lfp": lfp_probes,
                  "behavior_session": rows["behavior_session_table"]}
        for k, n in expect.items():
            if len(res[k]) != n:
                c1.fail(f"{v}: {len(res[k])} of {n} {k.replace('_', ' ')}s resolve to their file")
        c1.details.append(
            f"{v}: 5 tables loaded ({', '.join(f'{t} {n}' for t, n in rows.items())} rows); "
            f"{len(ok)}/{len(files)} files (tables, "
            + ", ".join(f"{a}/{b} {kind} NWBs" for kind, (a, b) in sorted(kinds.items()))
            + ") regular files at AllenSDK's path with the manifest's BLAKE2b")
        c1.details.append(
            f"{v}: get_ecephys_session -> {len(res['ecephys_session'])}/{expect['ecephys_session']} session NWBs "
            f"(abnormal ones included), probe_meta lfp_csd_filepath() -> {len(res['lfp'])}/{lfp_probes} LFP NWBs, "
            f"get_behavior_session -> {len(res['behavior_session'])}/{expect['behavior_session']} NWBs "
            f"({len(res.get('via_ecephys', []))} with file_id -999 -> their ecephys session's)")
    if side["tree_changes"]:
        c1.fail(f"AllenSDK changed the tree: {side['tree_changes'][:5]}")
    else:
        c1.details.append("AllenSDK created, removed or linked nothing in the tree")
    c1.notes += [f"AllenSDK warned: {w}" for w in side["warnings"]]

    # 2: the tables, side by side (AllenSDK keeps each CSV's column order: all of it is compared)
    compare_tables(c2, side, ours, versions, TABLES, [], ordered=lambda t: False)
    return c1, c2


# --- check 3: from_s3_cache on the tree, counting what it fetches ----------------------------------------


def check_s3(run: VbnRun, url: str, tree: Path, versions: list[str]) -> Check:
    from faultproxy import FaultProxy

    c = Check("3", "VBN from_s3_cache on a vbo-mirror tree: nothing it holds fetched again")
    held_manifests = {p.name for p in tree.glob(f"{PROJECT}_project_manifest_v*.json")}
    t0 = time.monotonic()
    with FaultProxy(url) as proxy:
        side = run.allensdk("s3", tree, proxy.url, "--versions", *versions)
        reqs = [(m, _classify(p)) for m, p, _h in proxy.requests]
    c.seconds = time.monotonic() - t0
    for v in versions:
        sv = side["versions"][v]
        for line in sv.get("problems", []):
            c.fail(f"{v}: {line}")
        if "error" in sv:
            c.fail(f"{v}: {sv['error']}")
    again = [key for m, (kind, key) in reqs if m == "GET" and kind in ("data", "metadata")]
    manifest_gets = [key for m, (kind, key) in reqs if m == "GET" and kind == "manifest"]
    again += [k for k in manifest_gets if k.rsplit("/", 1)[-1] in held_manifests]
    listings = sum(1 for _m, (kind, _k) in reqs if kind == "listing")
    n_files = sum(len(side["versions"][v].get("files", {})) for v in versions)
    resolved = {k: sum(len(side["versions"][v].get("resolved", {}).get(k, {})) for v in versions)
                for k in ("ecephys_session", "lfp", "behavior_session")}
    absent = [f["path"] for v in versions for f in side["versions"][v].get("files", {}).values() if not f["existed"]]
    line = (f"versions {', '.join(versions)}: {resolved['ecephys_session']} ecephys sessions, {resolved['lfp']} LFP "
            f"probes and {resolved['behavior_session']} behavior sessions resolved, then {n_files} files through "
            f"download_metadata / download_data; {len(again)} GETs of what the tree holds, {listings} listing "
            f"requests, {len(manifest_gets)} manifest GETs, {len(reqs)} requests in all")
    if not reqs:
        c.fail("no request reached the proxy: AllenSDK did not talk to the sandbox, so this proves nothing")
    if again:
        c.fail(line + f"; fetched again: {again[:5]}")
    else:
        c.details.append(line)
    if absent:
        c.fail(f"{len(absent)} files were not at AllenSDK's path before it asked: {absent[:3]}")
    if side["tree_changes"]:
        c.fail(f"AllenSDK changed the tree: {side['tree_changes'][:5]}")
    else:
        c.details.append("AllenSDK downloaded, created or linked nothing in the tree")
    c.notes += [f"AllenSDK warned: {w}" for w in side["warnings"]]
    return c



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allensdk-python", default=str(ROOT / ".venv-allensdk" / "bin" / "python"),
                    help="Python of the AllenSDK venv (default: .venv-allensdk/bin/python)")
    ap.add_argument("--vbn-versions", nargs="+", default=["0.4.0", "0.5.0"],
                    help="versions vbo-mirror syncs for checks 1-3 (default: 0.4.0 0.5.0)")
    ap.add_argument("--versions", nargs="+", help="check_allensdk.py's (Ophys versions): accepted, ignored here")
    ap.add_argument("--workdir", help="keep everything in WORKDIR/vbn (default: a temp dir, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (trees, logs, JSON of both sides)")
    ap.add_argument("--report", help="also write the results as JSON, to REPORT's name with -vbn before .json")
    args = ap.parse_args()
    version = allensdk_version(args, "check_vbn")
    if version is None:
        return 2
    keep_dir = bool(args.workdir)
    args.workdir = str(Path(args.workdir) / "vbn") if args.workdir else tempfile.mkdtemp(prefix="vbo-allensdk-vbn-")
    versions = args.vbn_versions
    run = VbnRun(args)
    print(f"check_vbn: AllenSDK {version} from {args.allensdk_python}; work dir {run.work}", flush=True)
    tree_local, tree_s3 = run.work / "tree-local", run.work / "tree-s3"

    def prepare(url: str) -> str:
        run.sync(tree_local, url, versions)
        run.sync(tree_s3, url, versions)
        return f"{DATASET}: two trees"

    report = None
    if args.report:
        path = Path(args.report)
        report = str(path.with_name(f"{path.stem}-vbn{path.suffix or '.json'}"))
    return run_checks(
        run, Sandbox(SPEC, dataset=DATASET, log_path=run.work / "moto.log"), prepare=prepare,
        online=lambda url: [("4", "VBN compare_manifests",
                             lambda: check_compare(run, url, bucket=BUCKET, title="VBN compare_manifests")),
                            ("3", "VBN from_s3_cache on a vbo-mirror tree",
                             lambda: check_s3(run, url, tree_s3, versions))],
        offline=lambda url: list(check_local(run, tree_local, url, versions)),
        offline_titles=("VBN from_local_cache on a vbo-mirror tree, offline", "VBN get_*_table(): AllenSDK vs vbo-mirror"),
        title="AllenSDK 2.16.2 against vbo-mirror, Visual Behavior Neuropixels: summary", report=report,
        keep=args.keep or keep_dir)


if __name__ == "__main__":
    sys.exit(main())
