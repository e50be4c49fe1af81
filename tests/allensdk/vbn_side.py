"""The AllenSDK half of the Visual Behavior Neuropixels (VBN) part of `make test-allensdk`: run by
the AllenSDK venv's Python (.venv-allensdk), driven by check_vbn.py, which reads the JSON it
writes to --out. The Ophys half's helpers (allensdk_side.py: describe_frame, the no-network audit
hook, the NWB reader stub, the warning lines) are imported, not copied.

    python vbn_side.py local   --cache-dir D --versions 0.4.0 0.5.0 --out R.json
    python vbn_side.py s3      --cache-dir D --versions 0.4.0 0.5.0 --out R.json
    python vbn_side.py compare --cache-dir D --out R.json

local    First, before AllenSDK's cache object exists: every file of each version's manifest
         (tables and NWBs) at the path AllenSDK's own Manifest class gives it, checked as a regular
         file (not a symlink) with the manifest's BLAKE2b. This comes first because AllenSDK's
         LocalCache, asked for a missing file whose hash _downloaded_data.json lists, makes a
         symlink to the copy it lists and calls the file present. Then, with every outgoing
         connection refused: VisualBehaviorNeuropixelsProjectCache.from_local_cache, the five
         tables of each version (describe_frame), and every ecephys session, LFP probe and behavior
         session resolved through AllenSDK's get_ecephys_session / probe_meta[..].lfp_csd_filepath()
         / get_behavior_session (the NWB readers return the path instead of opening the file: the
         replica's NWBs are random bytes behind an HDF5 signature). Last, what AllenSDK changed in
         the tree (it should create nothing).
s3       from_s3_cache on such a tree (boto3 pointed at a counting proxy by the environment): each
         version loaded, its tables, every session and LFP path resolved the same way (through
         download_data, as a user opening them would), then download_metadata / download_data of
         every file of the manifest. The driver counts what went over the proxy.
compare  compare_manifests of S3CloudCache for every ordered pair of the bucket's VBN manifests.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import allensdk_side  # noqa: E402
from allensdk_side import _no_network, _stub_nwb_readers, _warning_lines, describe_frame  # noqa: E402

PROJECT = "visual-behavior-neuropixels"
BUCKET = "visual-behavior-neuropixels-data"
UI_CLASS = "VisualBehaviorNeuropixelsProjectCache"
NO_FILE = -999
# AllenSDK's getters (VisualBehaviorNeuropixelsProjectCache), called with their defaults: the
# ecephys session table leaves out the sessions with abnormal histology or activity.
TABLES = {"ecephys_session_table": "get_ecephys_session_table",
          "behavior_session_table": "get_behavior_session_table",
          "probe_table": "get_probe_table", "channel_table": "get_channel_table", "unit_table": "get_unit_table"}


def manifest_name(version: str) -> str:
    return f"{PROJECT}_project_manifest_v{version}.json"


def _import_cache():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # marshmallow's deprecations at import: not ours to report
        from allensdk.brain_observatory.behavior.behavior_project_cache import VisualBehaviorNeuropixelsProjectCache

    return VisualBehaviorNeuropixelsProjectCache


def _stub_readers() -> None:
    """BehaviorSession.from_nwb_path returns the path (allensdk_side's stub); the ecephys session's
    returns the path and the probe_meta AllenSDK built (whose lfp_csd_filepath() are lazy)."""
    from allensdk.brain_observatory.ecephys.behavior_ecephys_session import BehaviorEcephysSession

    _stub_nwb_readers()
    BehaviorEcephysSession.from_nwb_path = classmethod(
        lambda cls, nwb_path, probe_meta=None, **kw: {"path": str(nwb_path), "probe_meta": probe_meta})


def _tree_state(root: Path) -> dict[str, str]:
    """Every entry under root (but vbo-mirror's own .vbo-mirror/): relative path → kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".vbo-mirror" or rel_dir.startswith(".vbo-mirror" + os.sep):
            continue
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            out[os.path.normpath(os.path.join(rel_dir, name))] = "symlink" if os.path.islink(p) else "file"
    return out


def _tree_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return ([f"created {p} ({k})" for p, k in sorted(after.items()) if p not in before]
            + [f"removed {p}" for p in sorted(before) if p not in after]
            + [f"{p}: {before[p]} became {after[p]}" for p in sorted(before) if p in after and before[p] != after[p]])


def precheck_files(cache_dir: Path, version: str) -> dict:
    """Every file of the version's manifest where AllenSDK's Manifest puts it: a regular file with
    the manifest's hash. Nothing of AllenSDK's cache runs yet, so nothing can be linked in."""
    from allensdk.api.cloud_cache.manifest import Manifest
    from allensdk.api.cloud_cache.utils import file_hash_from_path

    with open(cache_dir / manifest_name(version), "rb") as f:
        manifest = Manifest(cache_dir, f)
    entries = [(f"metadata:{n}", manifest.metadata_file_attributes(n)) for n in manifest.metadata_file_names]
    entries += [(f"data:{i}", manifest.data_file_attributes(i)) for i in manifest.file_id_values]
    files = {}
    for label, attrs in entries:
        p = Path(attrs.local_path)
        is_file, is_link = p.is_file(), p.is_symlink()
        files[label] = {"path": str(p), "url": attrs.url, "is_file": is_file, "symlink": is_link,
                        "hash_ok": bool(is_file and file_hash_from_path(p) == attrs.file_hash)}
    return {"project_name": manifest.project_name, "manifest_version": manifest.version, "files": files}


def resolve_all(cache, frames: dict, problems: list[str], expected_paths: dict[str, str] | None) -> dict:
    """Every ecephys session (the unfiltered table), its LFP probes, and every behavior session,
    through AllenSDK's accessors. expected_paths: str(file_id) → the path precheck verified."""
    api = cache.fetch_api
    sessions = api.get_ecephys_session_table()  # all of them: abnormal sessions have NWBs too
    probes = frames["probe_table"]
    out = {"ecephys_session": {}, "lfp": {}, "behavior_session": {}}

    def expect(what: str, path: str, file_id) -> None:
        if not Path(path).is_file():
            problems.append(f"{what}: {path} is not a file")
        if expected_paths is None:
            return
        want = expected_paths.get(str(int(file_id)))
        if want is None:
            problems.append(f"{what}: AllenSDK resolved {path}, but file_id {int(file_id)} was not a verified file "
                            "before AllenSDK ran")
        elif want != path:
            problems.append(f"{what}: AllenSDK resolved {path}, file_id {int(file_id)} of the manifest is at {want}")

    for esid, row in sessions.iterrows():
        what = f"ecephys session {esid}"
        try:
            got = cache.get_ecephys_session(int(esid))
        except Exception as exc:  # noqa: BLE001 - reported, per session
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        out["ecephys_session"][str(esid)] = got["path"]
        expect(what, got["path"], row["file_id"])
        lfp = probes[(probes["ecephys_session_id"] == esid) & probes["has_lfp_data"]]
        meta = got["probe_meta"] or {}
        if sorted(meta) != sorted(lfp["name"]):
            problems.append(f"{what}: probe_meta has {sorted(meta)}, the probe table's LFP probes are "
                            f"{sorted(lfp['name'])}")
        for pid, prow in lfp.iterrows():
            if prow["name"] not in meta:
                continue
            pwhat = f"LFP of probe {pid} ({esid} {prow['name']})"
            try:
                path = str(meta[prow["name"]].lfp_csd_filepath())
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{pwhat}: {type(exc).__name__}: {exc}")
                continue
            out["lfp"][str(pid)] = path
            expect(pwhat, path, prow["file_id"])
    bst = frames["behavior_session_table"]
    for bsid, row in bst.iterrows():
        what = f"behavior session {bsid}"
        try:
            path = str(cache.get_behavior_session(int(bsid)))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        out["behavior_session"][str(bsid)] = path
        file_id = row["file_id"]
        if file_id == NO_FILE:  # read from its ecephys session's NWB
            esid = row["ecephys_session_id"]
            if esid not in sessions.index:
                problems.append(f"{what}: file_id {NO_FILE} and ecephys session {esid} is not in the table")
                continue
            file_id = sessions.loc[esid, "file_id"]
            out.setdefault("via_ecephys", []).append(str(bsid))
        expect(what, path, file_id)
    return out


def run_local(args) -> dict:
    cache_dir = Path(args.cache_dir)
    out: dict = {"versions": {v: {"manifest": manifest_name(v), "problems": []} for v in args.versions}}
    # 1. the files, before anything of AllenSDK's cache can make them
    expected: dict[str, dict[str, str]] = {}
    for version in args.versions:
        v = out["versions"][version]
        try:
            pre = precheck_files(cache_dir, version)
        except Exception as exc:  # noqa: BLE001
            v["problems"].append(f"reading {manifest_name(version)}: {type(exc).__name__}: {exc}")
            continue
        v["files"] = pre["files"]
        expected[version] = {k.split(":", 1)[1]: f["path"] for k, f in pre["files"].items()
                             if k.startswith("data:") and f["hash_ok"] and not f["symlink"]}
        for label, f in pre["files"].items():
            if not f["is_file"]:
                v["problems"].append(f"{label}: nothing at {f['path']}")
            elif f["symlink"]:
                v["problems"].append(f"{label}: {f['path']} is a symlink")
            elif not f["hash_ok"]:
                v["problems"].append(f"{label}: {f['path']} does not have the manifest's BLAKE2b")
    before = _tree_state(cache_dir)

    # 2. AllenSDK's cache, offline
    VisualBehaviorNeuropixelsProjectCache = _import_cache()
    _stub_readers()
    attempts = _no_network()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = VisualBehaviorNeuropixelsProjectCache.from_local_cache(cache_dir=args.cache_dir)
        out["current_manifest_at_open"] = cache.current_manifest()
        out["downloaded_manifests"] = cache.list_all_downloaded_manifests()
        out["manifest_file_names"] = cache.list_manifest_file_names()
        for version in args.versions:
            name = manifest_name(version)
            v = out["versions"][version]
            try:
                if cache.current_manifest() != name:
                    cache.load_manifest(name)
                v["loaded"] = cache.current_manifest()
                frames = {t: getattr(cache, getter)() for t, getter in TABLES.items()}
                v["tables"] = {t: describe_frame(df) for t, df in frames.items()}
                v["all_ecephys_sessions"] = len(cache.fetch_api.get_ecephys_session_table())
                v["resolved"] = resolve_all(cache, frames, v["problems"], expected.get(version, {}))
            except Exception as exc:  # noqa: BLE001 - one version's failure is reported with the rest
                v["error"] = f"{type(exc).__name__}: {exc}"
                v["traceback"] = traceback.format_exc()
    out["warnings"] = _warning_lines(caught)
    out["network_attempts"] = attempts
    # 3. what AllenSDK did to the tree (_manifest_last_used.txt is rewritten in place: expected)
    out["tree_changes"] = _tree_changes(before, _tree_state(cache_dir))
    return out


def run_s3(args) -> dict:
    VisualBehaviorNeuropixelsProjectCache = _import_cache()
    _stub_readers()
    cache_dir = Path(args.cache_dir)
    before = _tree_state(cache_dir)
    out: dict = {"versions": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        cache = VisualBehaviorNeuropixelsProjectCache.from_s3_cache(cache_dir=args.cache_dir)
        out["open_s"] = round(time.monotonic() - t0, 2)
        out["current_manifest_at_open"] = cache.current_manifest()
        s3 = cache.fetch_api.cache
        for version in args.versions:
            name = manifest_name(version)
            v: dict = {"manifest": name, "problems": [], "files": {}}
            out["versions"][version] = v
            try:
                if cache.current_manifest() != name:
                    cache.load_manifest(name)
                v["loaded"] = cache.current_manifest()
                frames = {t: getattr(cache, getter)() for t, getter in TABLES.items()}
                v["rows"] = {t: len(df) for t, df in frames.items()}
                v["resolved"] = resolve_all(cache, frames, v["problems"], None)
                # and every file of the manifest, as a user downloading it all would
                for table in s3.metadata_file_names:
                    attrs = s3._manifest.metadata_file_attributes(table)
                    before_exists = attrs.local_path.exists()
                    path = s3.download_metadata(table)
                    v["files"][f"metadata:{table}"] = {"existed": before_exists, "path": str(path),
                                                       "symlink": Path(path).is_symlink(), "url": attrs.url}
                for file_id in s3._manifest.file_id_values:
                    attrs = s3._manifest.data_file_attributes(file_id)
                    before_exists = attrs.local_path.exists()
                    path = s3.download_data(file_id)
                    v["files"][f"data:{file_id}"] = {"existed": before_exists, "path": str(path),
                                                     "symlink": Path(path).is_symlink(), "url": attrs.url}
            except Exception as exc:  # noqa: BLE001
                v["error"] = f"{type(exc).__name__}: {exc}"
                v["traceback"] = traceback.format_exc()
    out["warnings"] = _warning_lines(caught)
    out["tree_changes"] = _tree_changes(before, _tree_state(cache_dir))
    return out


def run_compare(args) -> dict:
    return allensdk_side.run_compare(args, PROJECT, UI_CLASS)


if __name__ == "__main__":
    sys.exit(allensdk_side.main({"local": run_local, "s3": run_s3, "compare": run_compare}, bucket=BUCKET))
