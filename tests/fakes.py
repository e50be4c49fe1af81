"""One typed fake of the Remote, for engine tests whose fault must be exact: each GET runs a
script that may record, sleep, raise, or hand over bytes mid-way, as the real transport does
(bytes land in pool buffers the sink gives back)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from mirror.model import ObjectRef
from mirror.remote.http import BufferPool


@dataclass(frozen=True)
class Call:
    """One GET: the object and the byte range asked for."""

    key: str
    start: int
    end: int | None
    size: int | None

    @property
    def length(self) -> int:
        return (self.end if self.end is not None else self.size) - self.start


# script(call, deliver) -> the bytes still to hand over (None: the whole range, b"x" each);
# `deliver(data)` hands bytes over at once (what arrived before a fault).
Script = Callable[[Call, Callable[[bytes], None]], Awaitable[bytes | None]]


class ScriptedRemote:
    def __init__(self, script: Script | None = None, *, buffer_size: int = 64 << 10, buffers: int = 64) -> None:
        self.buffers = BufferPool(buffer_size, buffers)  # the engine gives them back through remote.buffers
        self.script = script
        self.calls: list[Call] = []

    async def get_into(self, ref: ObjectRef, sink, *, start: int = 0, end: int | None = None,
                       size: int | None = None, if_match: str | None = None, seen: dict | None = None) -> None:
        call = Call(ref.key, start, end, size)
        self.calls.append(call)

        def deliver(data: bytes) -> None:
            view = memoryview(data)
            while view:
                buf = self.buffers.take()
                assert buf is not None, "the fake's buffer pool ran dry: give it more buffers"
                n = min(len(view), len(buf))
                buf[:n] = view[:n]
                sink(buf, n)
                view = view[n:]

        rest = await self.script(call, deliver) if self.script is not None else None
        deliver(b"x" * call.length if rest is None else rest)

    def keys(self) -> list[str]:
        return [c.key for c in self.calls]
