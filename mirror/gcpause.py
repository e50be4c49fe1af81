"""Pause Python's cyclic garbage collector while millions of acyclic objects are built.

Parsing a manifest and planning make several objects per entry (JSON dicts, entries,
targets, plan tuples), none of them in a reference cycle; each collection of the oldest
generation walks all of them again. On a 1,000,000-entry manifest those walks cost ~8 s of
a ~35 s plan. Reference counting still frees everything as usual.

When the last pause ends, what was built is moved to the oldest generation without a walk
(gc.freeze + gc.unfreeze) rather than walked by the first young collections after it: on the
same manifest, `vbo-mirror --offline plan` went from 12.3-12.5 s to 11.3 s (2 runs each).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Nestable and thread-safe: the collector is enabled again (if it was) when the last
    pause ends."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                # What was built meanwhile goes straight to the oldest generation (freeze, then
                # unfreeze: no walk over it), instead of being walked by the first young
                # collections after the pause.
                gc.freeze()
                gc.unfreeze()
                gc.enable()
