"""One long-lived event loop in a thread of its own, for the synchronous API.

`Mirror`'s methods are synchronous; the work is asyncio. Every call runs its coroutine on
this one loop (uvloop when installed), so what the session holds (connections, the pacer)
lives across calls, and a caller that is itself inside a running loop (Jupyter) is served
the same way as a script.

Ctrl-C while a call runs (or, in the CLI, SIGTERM/SIGHUP, raised as `Terminated`): the
KeyboardInterrupt arrives in the caller's thread, which
cancels the job on the loop, waits until it has cleaned up (parts in flight stopped,
partials and their resume state kept, the index saved), and then raises KeyboardInterrupt.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable, TypeVar

from .errors import Terminated

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _caller_task() -> asyncio.Task | None:
    """The asyncio task this call is made from, if the calling thread runs a loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class LoopThread:
    def __init__(self, name: str = "vbo-mirror-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._loop is not None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()

                def serve() -> None:
                    loop = _new_loop()
                    asyncio.set_event_loop(loop)
                    self._loop = loop
                    ready.set()
                    try:
                        loop.run_forever()
                    finally:
                        try:
                            loop.run_until_complete(loop.shutdown_asyncgens())
                        finally:
                            loop.close()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
            return self._loop

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine `make()` on the loop and return its result (or raise its error).

        Interrupted, it cancels the job, waits for the job's cleanup, and re-raises: a
        KeyboardInterrupt in this thread (a script, Jupyter), or the cancellation of the
        caller's own asyncio task (`asyncio.run`'s Ctrl-C handler cancels its main task; the
        caller is blocked in here, so that is looked for every 0.1 s)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a Mirror method was called from inside vbo-mirror's own event loop")
        loop = self._ensure()
        caller = _caller_task()
        done = threading.Event()
        box: dict[str, asyncio.Task] = {}

        def start() -> None:
            task = loop.create_task(make())
            box["task"] = task
            task.add_done_callback(lambda _: done.set())

        loop.call_soon_threadsafe(start)
        try:
            if caller is None:
                done.wait()
            else:
                while not done.wait(0.1):
                    if caller.cancelling():
                        raise asyncio.CancelledError()
        except (KeyboardInterrupt, Terminated, asyncio.CancelledError):
            # `start` ran or runs before this (the loop takes callbacks in order).
            loop.call_soon_threadsafe(lambda: box["task"].cancel())
            while True:
                try:
                    done.wait()  # the job's cleanup: stopping parts, keeping partials, saving the index
                    break
                except (KeyboardInterrupt, Terminated):
                    continue  # a second Ctrl-C (or SIGTERM) does not abandon the cleanup
            task = box["task"]
            if not task.cancelled():
                task.exception()  # retrieved (an error in the cleanup): the interruption is what is reported
            raise
        return box["task"].result()

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout=10)
