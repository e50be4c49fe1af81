"""vbo-mirror: a fast, verified, resumable mirror of the Visual Behavior Ophys S3 release."""

from __future__ import annotations

__all__ = ["Mirror", "Selection", "Shard"]


def __getattr__(name: str):
    # Imported lazily so `python -m mirror.sandbox...` and the CLI start without loading all of it.
    if name == "Mirror":
        from .api import Mirror

        return Mirror
    if name in ("Selection", "Shard"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
