"""What AllenSDK's own cache keeps beside the files, kept for it: `_downloaded_data.json`.

AllenSDK's `from_s3_cache` decides what to download by this record (absolute path of each
file it has, resolved → the manifest's file_hash): with it, a new version whose files are
already on disk under another version is linked by AllenSDK instead of downloaded again,
and AllenSDK does not warn that the cache "has no record of what those files are". Each
sync adds its views in AllenSDK's own format (indent 2, sorted keys), by read, merge and
atomic rename under our lock file: a reader (ours or AllenSDK's) never sees half a file.
AllenSDK itself writes the record in place without a lock; two writers at the very same
moment can still lose an entry, which only costs AllenSDK a download later.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from .fsutil import atomic_write, flocked, read_no_follow
from .layout import CacheLayout

RECORD = "_downloaded_data.json"
MAX_RECORD = 1 << 30


def record_downloaded(layout: CacheLayout, views: Iterable[tuple[str, str]]) -> int:
    """Add (view path relative to cache_dir, file_hash) pairs; returns how many were new."""
    path = layout.root / RECORD
    root = os.path.realpath(layout.root)
    wanted = {os.path.join(root, rel): h for rel, h in views}
    if not wanted:
        return 0
    with flocked(layout.meta / "allensdk.lock", f"updating {path}"):
        try:
            have = json.loads(read_no_follow(path, "AllenSDK's record of downloaded files", limit=MAX_RECORD))
            if not isinstance(have, dict):
                have = {}
        except FileNotFoundError:
            have = {}
        except ValueError:
            have = {}  # not JSON (AllenSDK interrupted mid-write): rewritten whole from what we know
        new = {p: h for p, h in wanted.items() if have.get(p) != h}
        if not new:
            return 0
        have.update(new)
        atomic_write(path, json.dumps(have, indent=2, sort_keys=True).encode(), durable=False)
        return len(new)
