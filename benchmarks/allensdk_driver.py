"""Fetch one Visual Behavior Ophys version the way AllenSDK 2.16.2 does, for the benchmark.

Run by the AllenSDK venv's Python (benchmarks/tools.py plans it), never by the project's:
AllenSDK pins numpy<1.24 and pandas 1.5.3.

    python allensdk_driver.py --cache-dir DIR --version 1.0.1 [--only FILE.json]

AllenSDK builds its boto3 client itself (unsigned, no endpoint argument), so the server is
chosen by the environment: AWS_ENDPOINT_URL_S3 (boto3 >= 1.28) and an AWS_CONFIG_FILE with
path-style addressing. Without AWS_ENDPOINT_URL_S3 this refuses to run rather than go to AWS.

What it does is what a user's first `from_s3_cache` plus a full download costs: AllenSDK
lists the manifests, loads the newest one and its metadata tables, then the requested
version's manifest is loaded into the same S3CloudCache and each metadata and data file is
fetched with download_metadata / download_data (one GET with VersionId per file, one file at
a time, BLAKE2b checked after each). Loading is done at the S3CloudCache level because the
project cache refuses manifests outside 1.0.0 <= v < 2.0.0, and the benchmark also times
0.x versions. Prints one JSON line: counts and seconds per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--only", help="JSON {metadata_files: [names], data_files: [ids]}: fetch just these")
    args = ap.parse_args()
    if not os.environ.get("AWS_ENDPOINT_URL_S3"):
        print("allensdk_driver: AWS_ENDPOINT_URL_S3 is not set; refusing to talk to AWS", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")  # OutdatedManifestWarning and friends: expected here

    t0 = time.perf_counter()
    from allensdk.brain_observatory.behavior.behavior_project_cache import (  # here, to time the import
        VisualBehaviorOphysProjectCache,
    )

    t_import = time.perf_counter()
    cache = VisualBehaviorOphysProjectCache.from_s3_cache(cache_dir=args.cache_dir)
    names = cache.list_manifest_file_names()
    t_open = time.perf_counter()
    want = f"{VisualBehaviorOphysProjectCache.PROJECT_NAME}_project_manifest_v{args.version}.json"
    if want not in names:
        print(f"allensdk_driver: {want} is not among the server's manifests {names}", file=sys.stderr)
        return 3
    newest = cache.current_manifest()
    s3 = cache.fetch_api.cache  # S3CloudCache
    if s3.current_manifest != want:
        s3.load_manifest(want)
    if args.only:
        with open(args.only) as fh:
            only = json.load(fh)
        metadata, data = only["metadata_files"], [str(i) for i in only["data_files"]]
    else:
        metadata, data = list(s3.metadata_file_names), list(s3._manifest.file_id_values)
    t_manifest = time.perf_counter()
    for name in metadata:
        s3.download_metadata(name)
    for file_id in data:
        s3.download_data(file_id)
    t_end = time.perf_counter()
    print(json.dumps({"manifests": len(names), "newest_loaded_first": newest, "loaded": want,
                      "metadata_files": len(metadata), "data_files": len(data),
                      "import_s": round(t_import - t0, 3), "open_s": round(t_open - t_import, 3),
                      "manifest_s": round(t_manifest - t_open, 3), "download_s": round(t_end - t_manifest, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
