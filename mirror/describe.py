"""What `manifests show` and `manifests compare --json` say of versions: pure functions of a
manifest (or a diff) and the object sizes S3 gave."""

from __future__ import annotations

from typing import Any, Mapping

from .manifest import Manifest, ManifestDiff
from .model import ObjectInfo

Sizes = Mapping[tuple[str, str | None], ObjectInfo]


def manifest_summary(m: Manifest, infos: Sizes, *, current: bool) -> dict[str, Any]:
    meta = [infos.get((e.key, e.version_id)) for e in m.metadata_files.values()]
    data = [infos.get((e.key, e.version_id)) for e in m.data_files.values()]
    return {
        "name": m.name,
        "project_name": m.project_name,
        "manifest_version": m.manifest_version,
        "current": current,
        "metadata_files": len(meta),
        "data_files": len(data),
        "metadata_bytes": sum(i.size for i in meta if i),
        "data_bytes": sum(i.size for i in data if i),
        "total_bytes": sum(i.size for i in (*meta, *data) if i),
        "unknown_sizes": sum(1 for i in (*meta, *data) if i is None),
        "data_pipeline": [dict(p) for p in m.data_pipeline],
    }


def compare_detail(diff: ManifestDiff, ma: Manifest, mb: Manifest, infos: Sizes) -> dict[str, Any]:
    """Every change between two versions with the bytes it moves, and totals per kind."""
    by_path = {"a": {e.relative_path: e for e in ma.entries()}, "b": {e.relative_path: e for e in mb.entries()}}

    def size(side: str, path: str | None) -> int | None:
        e = by_path[side].get(path) if path else None
        info = infos.get((e.key, e.version_id)) if e else None
        return info.size if info else None

    changes = []
    totals: dict[str, int] = {}
    for c in diff.changes:
        old_path = c.old_path if c.change == "renamed" else (c.path if c.change != "created" else None)
        item = {"kind": c.kind, "change": c.change, "path": c.path, "old_path": c.old_path,
                "old_hash": c.old_hash, "new_hash": c.new_hash,
                "old_bytes": size("a", old_path),
                "new_bytes": size("b", c.path) if c.change != "deleted" else None}
        changes.append(item)
        moved = item["old_bytes"] if c.change == "deleted" else item["new_bytes"]
        totals[c.change] = totals.get(c.change, 0) + (moved or 0)
    counts = {k: sum(1 for c in diff.changes if c.change == k) for k in ("changed", "created", "deleted", "renamed")}
    return {"a": diff.a, "b": diff.b, "equivalent": not diff.changes, "counts": counts,
            "bytes": {k: totals.get(k, 0) for k in counts}, "changes": changes}
