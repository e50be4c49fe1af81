"""A whole run of a plan: what comes before the transfers (may it fetch at all, does it fit,
what verify will expect, the state index), `Engine.run`, and what comes after (AllenSDK's
record, the bucket layout's manifest). Every write goes through the `Store`."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import warnings
from typing import TYPE_CHECKING, Callable

from ..errors import OfflineError, OfflineWarning, StoreError
from ..limits import Limits
from ..plan import Plan
from ..policy import Pacer, RetryPolicy
from ..store.claims import Claims
from ..store.facade import Store
from ..store.index import reconcile
from .runner import Engine, Stats
from .verify import Verify

if TYPE_CHECKING:
    from ..events import Event
    from ..manifest import Manifest
    from ..remote.client import Remote


async def run_plan(plan: Plan, *, store: Store, remote: Remote | None, unreachable: Exception | None = None,
                   limits: Limits, verify: Verify = Verify.MANIFEST, policy: RetryPolicy | None = None,
                   pacer: Pacer | None = None, on_event: Callable[[Event], None] | None = None,
                   on_start: Callable[[Stats], None] | None = None, bucket_of: Manifest | None = None) -> Stats:
    """`remote` None: offline (`unreachable`: because the endpoint did not answer). `bucket_of`:
    the manifest whose bucket layout this plan makes (its `manifests/` is written after)."""
    _refuse_offline(plan, remote, unreachable)
    layout = store.layout
    _check_space(plan, store)
    await asyncio.to_thread(_record_wanted, plan, store)
    index = store.new_index()

    def prepare_index() -> dict:
        # The whole store (the plan looked only at what it wants), walked in the index thread.
        index.load()
        objects = {h: size for h, size, _ in store.iter_objects()}
        added, dropped = reconcile(index, objects, mtime_of=lambda h: _mtime(layout.object_path(h)))
        return {"added": added, "dropped": dropped}

    # With nothing to do the index is left alone (pyarrow need not even load), unless it is
    # missing: then this run rebuilds it from the store.
    busy = bool(plan.fetch or plan.link or plan.remove or plan.replace or plan.steal)
    claims = Claims(layout.claims_path) if plan.shard else None
    engine = Engine(store=store, remote=remote, index=index, limits=limits, policy=policy, verify=verify,
                    on_event=on_event or (lambda e: None), pacer=pacer,
                    prepare_index=prepare_index if busy or not layout.index_path.exists() else None, claims=claims)
    if on_start:
        on_start(engine.stats)
    try:
        stats = await engine.run(plan)
    finally:
        if claims is not None:
            claims.close()
    await asyncio.to_thread(_record_for_allensdk, plan, stats, store)
    if bucket_of is not None and not stats.failures:
        await asyncio.to_thread(store.bucket_manifest, bucket_of)
    return stats


def _refuse_offline(plan: Plan, remote: Remote | None, unreachable: Exception | None) -> None:
    if remote is not None or not (plan.fetch or plan.steal):
        return
    n = len(plan.fetch) + len(plan.steal)
    size = plan.fetch_bytes + sum(f.size or 0 for f in plan.steal)
    unknown = plan.unknown_sizes + sum(1 for f in plan.steal if f.size is None)
    if unknown == n:
        amount = "sizes unknown"
    else:
        amount = f"{size:,} bytes" + (f" + {unknown} of unknown size" if unknown else "")
    what = f"{n} file{'s' if n != 1 else ''} ({amount})"
    if unreachable is not None:
        raise OfflineError(f"{what} to fetch, and the endpoint did not answer: {unreachable}",
                           hint="check the network or --endpoint-url, then run the same command again")
    raise OfflineError(f"{what} to fetch, and --offline was given", hint="drop --offline to fetch them")


def _check_space(plan: Plan, store: Store) -> None:
    """Refuse up front when the fetch cannot fit, rather than fill the disk midway."""
    root = store.layout.root
    # A shard counts the other shards' fetches too: they all land in this one cache_dir.
    need = sum(f.size or 0 for f in itertools.chain(plan.fetch, plan.steal) if not store.partial_exists(f.file_hash))
    if not need:
        return
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise StoreError(f"not enough space under {root}: the plan fetches {need:,} bytes, "
                         f"{free:,} are free", hint="free space, or sync fewer versions (--version)")


def _record_wanted(plan: Plan, store: Store) -> None:
    """What verify will expect to find (store/wanted.py)."""
    for d in plan.whole:
        store.record_wanted(d, None)
    by_dir: dict[str, list[str]] = {}
    for view in plan.views():
        d = view.split("/", 1)[0]
        if d not in plan.whole:
            by_dir.setdefault(d, []).append(view)
    for d, views in by_dir.items():
        store.record_wanted(d, views)


def _record_for_allensdk(plan: Plan, stats: Stats, store: Store) -> None:
    """AllenSDK's `_downloaded_data.json` (store/allensdk.py), for the views in its layout
    that this run made or found. A record that cannot be written is a warning: the mirror
    itself is complete."""
    if plan.layout != "allensdk":
        return  # the bucket layout is read by AllenSDK's static cache, which keeps no record
    layout = store.layout
    if not (plan.fetch or plan.steal or plan.link or plan.replace) and (layout.root / "_downloaded_data.json").exists():
        return  # a no-op resync: its views were recorded when they were made (and stays fast)
    failed = {v for f in stats.failures for v in f.views}
    pairs = list(zip(plan.present, plan.present_hashes))
    pairs += [(x.view, x.file_hash) for x in plan.link]
    pairs += [(v, f.file_hash) for f in (*plan.fetch, *plan.steal) for v in f.views]
    pairs = [(v, h) for v, h in pairs if v not in failed and os.path.isfile(layout.view_path(v))]
    try:
        store.record_downloaded(pairs)
    except StoreError as exc:
        warnings.warn(f"AllenSDK's record of downloaded files not updated: {exc}", OfflineWarning, stacklevel=2)


def _mtime(path) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
