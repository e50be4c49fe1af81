"""The only code that speaks S3 or HTTP. Everything above sees our types and our errors."""

from .client import Remote, RemoteSettings, Timeouts
from .types import ObjectInfo, ObjectRef

__all__ = ["ObjectInfo", "ObjectRef", "Remote", "RemoteSettings", "Timeouts"]
