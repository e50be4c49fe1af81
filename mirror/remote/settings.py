"""What a Remote is told: plain data, importable without loading any network code."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from ..model import ObjectRef

TRANSPORTS = ("lean", "aiohttp")


@dataclass(frozen=True)
class Timeouts:
    """Every timeout is configurable: AllenSDK's fixed ones are a known pain on slow links."""

    connect: float = 10.0  # opening a connection (not waiting for a free one in the pool)
    read: float = 60.0  # without a byte of a response
    min_rate: float = 1024.0  # bytes/s a response body must keep up over `rate_window` (0: off)
    rate_window: float = 30.0
    straggler_factor: float = 8.0  # a response this many times slower than its peers' median is retried (0: off)
    straggler_window: float = 5.0


@dataclass(frozen=True)
class RemoteSettings:
    bucket: str
    region: str
    endpoint_url: str | None = None  # overrides the host; bucket and key are kept
    signed: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    transport: str = "lean"

    @property
    def base_url(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/")
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com"

    def object_url(self, ref: ObjectRef) -> str:
        """The object's URL with its version. AWS gets the virtual-hosted form the manifests
        use; a user-given endpoint keeps bucket and key, path-style, under its own host."""
        key = quote(ref.key, safe="/~-._")
        if self.endpoint_url:
            url = f"{self.base_url}/{ref.bucket}/{key}"
        else:
            url = f"https://{ref.bucket}.s3.{self.region}.amazonaws.com/{key}"
        if ref.version_id:
            url += f"?versionId={quote(ref.version_id, safe='')}"
        return url
