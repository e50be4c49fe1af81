"""The only code that speaks S3 or HTTP. Everything above sees our types and our errors."""

from .settings import RemoteSettings, Timeouts
from ..model import ObjectInfo, ObjectRef

__all__ = ["ObjectInfo", "ObjectRef", "OnDemand", "Remote", "RemoteSettings", "Timeouts"]


class OnDemand:
    """Stands for a Remote that is made (and its network code imported: ssl, the HTTP client,
    the listing parser, ~25 ms) on first use, in the running loop; `aclose` closes it if it
    was. A command that finds everything in cache_dir, such as a no-op resync, never pays."""

    def __init__(self, settings: RemoteSettings, limits) -> None:
        self._settings = settings
        self._limits = limits
        self._remote = None

    def __getattr__(self, name: str):
        remote = self.__dict__["_remote"]
        if remote is None:
            from .client import Remote

            remote = Remote(self._settings, self._limits)
            remote.open()
            self.__dict__["_remote"] = remote
        return getattr(remote, name)

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()


def __getattr__(name: str):
    # The client (and asyncio, ssl) load only when a Remote is made: `--help`, `status` and
    # the planner do not need them.
    if name == "Remote":
        from .client import Remote

        return Remote
    raise AttributeError(name)
