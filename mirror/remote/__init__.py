"""The only code that speaks S3 or HTTP. Everything above sees our types and our errors."""

from .settings import RemoteSettings, Timeouts
from .types import ObjectInfo, ObjectRef

__all__ = ["ObjectInfo", "ObjectRef", "Remote", "RemoteSettings", "Timeouts"]


def __getattr__(name: str):
    # The client (and asyncio, ssl) load only when a Remote is made: `--help`, `status` and
    # the planner do not need them.
    if name == "Remote":
        from .client import Remote

        return Remote
    raise AttributeError(name)
