"""`verify --repair`: after `verify_store` has found what is damaged, make it right again.

Wrong views are removed (a sync would replace them anyway); damaged content is fetched again
and missing views are linked, by the same plan and engine a sync uses (`fix`, given by the
session: this module does not import them). Views whose content was never in the store are
more than damage (a whole version may be behind them): they are fetched only when `confirm`,
shown which, says yes.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Awaitable, Callable

from ..errors import ViewBlocked
from ..manifest import Manifest
from ..reports import Repaired, VerifyReport
from ..store.layout import CacheLayout

if TYPE_CHECKING:
    from ..engine.runner import Stats
    from ..store.facade import Store

# fix(manifests, keys, layout): fetch and link those keys' views, as a sync of them would
Fix = Callable[[list[Manifest], set[str], str], Awaitable["Stats"]]


async def repair(report: VerifyReport, layout: CacheLayout, store: Store, manifests: list[Manifest], *, fix: Fix,
                 confirm: Callable[[dict], bool] | None) -> VerifyReport:
    """Repairs what `report` (verify_store's) found; sets its `repaired` (and `repair_declined`)."""
    for rel in report.views_wrong:  # what a sync would replace anyway
        with contextlib.suppress(ViewBlocked):  # a directory in the way: the repair reports it
            store.remove_view(rel)
    bad = {c.file_hash for c in report.corrupt}
    wrong = set(report.views_wrong) | set(report.views_missing)
    new = set(report.views_missing_unstored)
    if new and not (confirm is not None and confirm({"views": sorted(new)})):
        wrong -= new
        report.repair_declined = sorted(new)
    keys = {e.key for m in manifests for e in m.entries()
            if e.file_hash in bad or f"{m.view_dir}/{e.relative_path}" in wrong}
    runs = [await fix(manifests, keys, "allensdk")] if keys else []
    for m in manifests:  # the bucket layout's views (sync --layout bucket)
        if os.path.isfile(layout.view_path(f"{m.project_name}/manifests/{m.name}")):
            bkeys = {e.key for e in m.entries()
                     if e.file_hash in bad or f"{m.project_name}/{e.relative_path}" in wrong}
            if bkeys:
                runs.append(await fix([m], bkeys, "bucket"))
    failures = [f for st in runs for f in st.failures]
    report.repaired = Repaired(sum(st.files_done for st in runs), sum(st.files_linked for st in runs), failures)
    report.ok = not failures and not report.repair_declined
    return report
