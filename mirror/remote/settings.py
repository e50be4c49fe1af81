"""What a Remote is told: plain data, importable without loading any network code."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from ..model import ObjectRef

TRANSPORTS = ("lean", "aiohttp")
# Where an endpoint comes from when none is given, first found wins: the CLI and the API agree.
ENDPOINT_ENV = ("VBO_MIRROR_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_from_env() -> tuple[str | None, str | None]:
    """(endpoint, the variable it came from), or (None, None)."""
    for var in ENDPOINT_ENV:
        value = os.environ.get(var)
        if value:
            return value, var
    return None, None


def check_endpoint(url: str, source: str) -> str:
    """An endpoint URL with a scheme and a host, or an InputError saying what is wrong."""
    from ..errors import InputError

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = url.strip() if "://" not in url else parts.netloc or "127.0.0.1:9000"
        raise InputError(f"{source} {url!r}: the endpoint needs http:// or https:// and a host",
                         hint=f"e.g. http://{example.split('/')[0]}")
    if parts.query or parts.fragment:
        raise InputError(f"{source} {url!r}: an endpoint has no query or fragment")
    return url.strip()


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
