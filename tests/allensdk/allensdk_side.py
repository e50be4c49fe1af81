"""The AllenSDK half of `make test-allensdk`: run by the AllenSDK venv's Python (.venv-allensdk:
allensdk 2.16.2, pandas 1.5.3, numpy < 1.24), never by the project's, and driven by
check_allensdk.py, which reads the JSON it writes to --out.

    python allensdk_side.py local   --cache-dir D --versions 1.0.1 1.1.0 --out R.json
    python allensdk_side.py s3      --cache-dir D --versions 1.0.1 1.1.0 --out R.json
    python allensdk_side.py compare --cache-dir D --out R.json

local    VisualBehaviorOphysProjectCache.from_local_cache on a tree vbo-mirror synced, with every
         outgoing connection refused (an audit hook on socket.connect): the current manifest,
         the four tables of each version (described by describe_frame), and where AllenSDK's
         get_behavior_session / get_behavior_ophys_experiment would open each NWB (their
         from_nwb_path is replaced by one that returns the path: the replica's NWBs are not HDF5).
s3       from_s3_cache on such a tree (boto3 pointed at a counting proxy by the environment:
         AWS_ENDPOINT_URL_S3 and a path-style AWS_CONFIG_FILE): each version's tables and every
         data file through download_metadata / download_data, as a user fetching them would.
compare  compare_manifests of S3CloudCache for every ordered pair of the bucket's manifests.

describe_frame is also imported by check_allensdk.py (pandas 3 there), so it keeps to what
both pandas versions share.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

PROJECT = "visual-behavior-ophys"
BUCKET = "visual-behavior-ophys-data"
TABLES = {"behavior_session_table": "get_behavior_session_table", "ophys_session_table": "get_ophys_session_table",
          "ophys_experiment_table": "get_ophys_experiment_table", "ophys_cells_table": "get_ophys_cells_table"}


def manifest_name(version: str) -> str:
    return f"{PROJECT}_project_manifest_v{version}.json"


# --- describing a DataFrame the same way on both sides -------------------------------------------


def _missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, (list, tuple, dict, set, str)):
        return False
    if type(v).__name__ in ("NAType", "NaTType"):
        return True
    try:
        return math.isnan(v)  # NaN (float or numpy)
    except (TypeError, ValueError):
        return False


def _norm(v):
    """A cell as plain JSON: lists stay lists, missing values are None, dates ISO text."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if _missing(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if type(v).__name__ in ("bool", "bool_"):
        return bool(v)
    if hasattr(v, "dtype") and hasattr(v, "item"):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and math.isinf(v):
        return str(v)
    return v


def _cell_type(v) -> str:
    """The Python type of a cell of an object column (what a user's code meets)."""
    return type(v).__name__


def describe_frame(df) -> dict:
    """Index, columns in order, dtypes, the Python types found in object columns (lists, str,
    ...), the element types inside list cells, and every value (normalised)."""
    object_columns = [c for c in df.columns if str(df[c].dtype) == "object"]
    cell_types = {c: sorted({_cell_type(v) for v in df[c].tolist() if not _missing(v)}) for c in object_columns}
    list_elements = {c: sorted({_cell_type(x) for v in df[c].tolist() if isinstance(v, (list, tuple)) for x in v})
                     for c in object_columns}
    return {
        "index": {"name": df.index.name, "dtype": str(df.index.dtype)},
        "columns": [str(c) for c in df.columns],
        "dtypes": {str(c): str(df[c].dtype) for c in df.columns},
        "cell_types": cell_types,
        "list_columns": sorted(c for c, types in cell_types.items() if "list" in types),
        "list_elements": {c: t for c, t in list_elements.items() if t},
        "rows": len(df),
        "index_values": [_norm(v) for v in df.index.tolist()],
        "values": {str(c): [_norm(v) for v in df[c].tolist()] for c in df.columns},
    }


# --- the AllenSDK side ---------------------------------------------------------------------------


def _import_cache():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # marshmallow's deprecations at import: not ours to report
        from allensdk.brain_observatory.behavior.behavior_project_cache import VisualBehaviorOphysProjectCache

    return VisualBehaviorOphysProjectCache


def _warning_lines(caught) -> list[str]:
    out = []
    for w in caught:
        first = next((line for line in str(w.message).splitlines() if line.strip()), "")
        line = f"{w.category.__name__}: {first.strip()}"
        if line not in out:
            out.append(line)
    return out


def _no_network() -> list[str]:
    """Refuse every TCP/UDP connection from here on, and remember who tried."""
    attempts: list[str] = []

    def hook(event, args):
        if event == "socket.connect" and isinstance(args[1], tuple):
            attempts.append(repr(args[1]))
            raise ConnectionRefusedError(f"allensdk_side: no network in this check (connect to {args[1]!r})")
        if event == "socket.getaddrinfo":
            attempts.append(f"getaddrinfo {args[0]!r}")

    sys.addaudithook(hook)
    return attempts


def _stub_nwb_readers() -> None:
    """get_behavior_session / get_behavior_ophys_experiment resolve the NWB path with AllenSDK's
    own code (tables, file_id, the first experiment of a session without a file), then call
    from_nwb_path: here that returns the path instead of opening the file."""
    from allensdk.brain_observatory.behavior.behavior_ophys_experiment import BehaviorOphysExperiment
    from allensdk.brain_observatory.behavior.behavior_session import BehaviorSession

    BehaviorSession.from_nwb_path = classmethod(lambda cls, nwb_path, **kw: str(nwb_path))
    BehaviorOphysExperiment.from_nwb_path = classmethod(lambda cls, nwb_path, **kw: str(nwb_path))


def run_local(args) -> dict:
    VisualBehaviorOphysProjectCache = _import_cache()
    from allensdk.api.cloud_cache.utils import file_hash_from_path

    _stub_nwb_readers()
    attempts = _no_network()
    out: dict = {"versions": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = VisualBehaviorOphysProjectCache.from_local_cache(cache_dir=args.cache_dir,
                                                                 use_static_cache=args.static)
        out["current_manifest_at_open"] = cache.current_manifest()
        out["downloaded_manifests"] = cache.list_all_downloaded_manifests()
        out["manifest_file_names"] = cache.list_manifest_file_names()
        for version in args.versions:
            name = manifest_name(version)
            v: dict = {"manifest": name, "tables": {}, "problems": []}
            out["versions"][version] = v
            try:
                if cache.current_manifest() != name:
                    cache.load_manifest(name)
                v["loaded"] = cache.current_manifest()
                frames = {t: getattr(cache, getter)() for t, getter in TABLES.items()}
                v["tables"] = {t: describe_frame(df) for t, df in frames.items()}
                s3 = cache.fetch_api.cache
                # every data file of the manifest: where AllenSDK looks, and is it the right file
                files = {}
                for file_id in s3._manifest.file_id_values:
                    p = s3.data_path(file_id)
                    attrs = p["file_attributes"]
                    ok_hash = p["exists"] and file_hash_from_path(attrs.local_path) == attrs.file_hash
                    files[str(file_id)] = {"path": str(p["local_path"]), "exists": bool(p["exists"]),
                                           "hash_ok": bool(ok_hash)}
                    if not ok_hash:
                        v["problems"].append(f"data file {file_id}: {p['local_path']} "
                                             + ("has the wrong content" if p["exists"] else "is missing"))
                for table in TABLES:
                    p = s3.metadata_path(table)
                    if not p["exists"]:
                        v["problems"].append(f"metadata {table}: {p['local_path']} is missing")
                v["files"] = files
                # every session and experiment through AllenSDK's own accessors
                resolved = {"behavior_session": {}, "ophys_experiment": {}}
                for bsid in frames["behavior_session_table"].index.tolist():
                    try:
                        path = cache.get_behavior_session(int(bsid))
                        resolved["behavior_session"][str(bsid)] = path
                        if not Path(path).is_file():
                            v["problems"].append(f"behavior session {bsid}: {path} is not a file")
                    except Exception as exc:  # noqa: BLE001 - reported, per session
                        v["problems"].append(f"behavior session {bsid}: {type(exc).__name__}: {exc}")
                for oeid in frames["ophys_experiment_table"].index.tolist():
                    try:
                        path = cache.get_behavior_ophys_experiment(int(oeid))
                        resolved["ophys_experiment"][str(oeid)] = path
                        if not Path(path).is_file():
                            v["problems"].append(f"ophys experiment {oeid}: {path} is not a file")
                    except Exception as exc:  # noqa: BLE001
                        v["problems"].append(f"ophys experiment {oeid}: {type(exc).__name__}: {exc}")
                v["resolved"] = resolved
            except Exception as exc:  # noqa: BLE001 - one version's failure is reported with the rest
                v["error"] = f"{type(exc).__name__}: {exc}"
                v["traceback"] = traceback.format_exc()
    out["warnings"] = _warning_lines(caught)
    out["network_attempts"] = attempts
    from allensdk.brain_observatory.ophys.project_constants import VBO_METADATA_COLUMN_ORDER

    out["column_order"] = list(VBO_METADATA_COLUMN_ORDER)  # the oracle comes from AllenSDK itself
    return out


def run_s3(args) -> dict:
    VisualBehaviorOphysProjectCache = _import_cache()
    out: dict = {"versions": {}, "events": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        cache = VisualBehaviorOphysProjectCache.from_s3_cache(cache_dir=args.cache_dir)
        out["open_s"] = round(time.monotonic() - t0, 2)
        out["current_manifest_at_open"] = cache.current_manifest()
        s3 = cache.fetch_api.cache
        for version in args.versions:
            name = manifest_name(version)
            v: dict = {"manifest": name, "files": {}}
            out["versions"][version] = v
            try:
                if cache.current_manifest() != name:
                    cache.load_manifest(name)  # fetches the manifest and the tables it lacks
                # the tables: load_manifest fetched those it lacked already (the proxy saw it)
                for table in s3.metadata_file_names:
                    attrs = s3.metadata_path(table)
                    path = s3.download_metadata(table)
                    v["files"][f"metadata:{table}"] = {"existed": bool(attrs["exists"]), "path": str(path),
                                                       "symlink": Path(path).is_symlink(),
                                                       "url": attrs["file_attributes"].url,
                                                       "version_id": attrs["file_attributes"].version_id,
                                                       "file_hash": attrs["file_attributes"].file_hash}
                for file_id in s3._manifest.file_id_values:
                    attrs = s3.data_path(file_id)
                    before = attrs["local_path"].exists()
                    path = s3.download_data(file_id)
                    v["files"][f"data:{file_id}"] = {"existed": bool(before), "path": str(path),
                                                     "symlink": Path(path).is_symlink(),
                                                     "url": attrs["file_attributes"].url,
                                                     "version_id": attrs["file_attributes"].version_id,
                                                     "file_hash": attrs["file_attributes"].file_hash}
            except Exception as exc:  # noqa: BLE001
                v["error"] = f"{type(exc).__name__}: {exc}"
                v["traceback"] = traceback.format_exc()
    out["warnings"] = _warning_lines(caught)
    out["downloaded_data_json"] = (Path(args.cache_dir) / "_downloaded_data.json").exists()
    return out


def run_compare(args, project: str = PROJECT, ui_class_name: str = "VisualBehaviorOphysProjectCache") -> dict:
    """AllenSDK's compare_manifests text for every ordered pair of the bucket's manifests."""
    warnings.simplefilter("ignore")  # OutdatedManifestWarning for every older manifest: expected
    from allensdk.api.cloud_cache.cloud_cache import S3CloudCache

    cache = S3CloudCache(args.cache_dir, args.bucket, project, ui_class_name=ui_class_name)
    names = list(cache.manifest_file_names)
    pairs = {f"{a} {b}": cache.compare_manifests(a, b) for a in names for b in names if a != b}
    return {"manifests": names, "pairs": pairs}


def main(modes=None, bucket: str = BUCKET) -> int:
    """`modes`: mode name → function(args) (this dataset's: local, s3, compare)."""
    modes = modes or {"local": run_local, "s3": run_s3, "compare": run_compare}
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=tuple(modes))
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--versions", nargs="*", default=[])
    ap.add_argument("--bucket", default=bucket)
    ap.add_argument("--out", required=True)
    ap.add_argument("--static", action="store_true", help="local: from_local_cache(use_static_cache=True)")
    args = ap.parse_args()
    import importlib.metadata as md

    try:
        result = modes[args.mode](args)
        status = 0
    except Exception as exc:  # noqa: BLE001 - the driver reports it
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        status = 1
    result["allensdk"] = {d: md.version(d) for d in ("allensdk", "pandas", "numpy", "boto3", "botocore")}
    result["python"] = sys.version.split()[0]
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
