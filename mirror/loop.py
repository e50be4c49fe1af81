"""One long-lived event loop in a thread of its own, for the synchronous API.

`Mirror`'s methods are synchronous; the work is asyncio. Every call runs its coroutine on
this one loop (uvloop when installed), so what the session holds (connections, the pacer)
lives across calls, and a caller that is itself inside a running loop (Jupyter) is served
the same way as a script.

Interrupted while a call runs (Ctrl-C's KeyboardInterrupt; in the CLI, SIGTERM/SIGHUP
raised as `Terminated`; or the cancellation of the caller's own asyncio task), the calling
thread cancels the job on the loop, waits until it has cleaned up (parts in flight stopped,
partials and their resume state kept, the index saved), and then re-raises.

Callbacks a call is given (`on_event`, ...) run on the loop thread: they must not call the
same Mirror again (that raises RuntimeError rather than deadlock).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, TypeVar

from .errors import Terminated

T = TypeVar("T")
_INTERRUPTS = (KeyboardInterrupt, Terminated, asyncio.CancelledError)


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
        self._closed = False

    @property
    def started(self) -> bool:
        return self._loop is not None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("this Mirror is closed")
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
                            loop.run_until_complete(loop.shutdown_default_executor())  # to_thread's threads
                        finally:
                            loop.close()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
            return self._loop

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine `make()` on the loop and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a Mirror method was called from its own event loop (from a callback?)")
        loop = self._ensure()
        caller = _caller_task()
        # A call made while its task is already being cancelled (from a finally, say) runs;
        # only a cancellation that arrives during the call interrupts it.
        cancelled_before = caller.cancelling() if caller is not None else 0
        done = threading.Event()
        state: dict[str, Any] = {"task": None, "error": None, "cancel": False}

        def start() -> None:  # on the loop
            try:
                if state["cancel"]:
                    raise asyncio.CancelledError()
                task = loop.create_task(make())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                state["error"] = exc
                done.set()
                return
            state["task"] = task
            task.add_done_callback(lambda _: done.set())

        def cancel() -> None:  # on the loop, after `start` if that was scheduled (callbacks run in order)
            state["cancel"] = True
            if state["task"] is not None:
                state["task"].cancel()
            elif state["error"] is None:
                state["error"] = asyncio.CancelledError()
                done.set()  # `start` was never scheduled: nothing runs

        try:
            loop.call_soon_threadsafe(start)
            if caller is None:
                done.wait()
            else:
                while not done.wait(0.1):
                    if caller.cancelling() > cancelled_before:
                        raise asyncio.CancelledError()
        except _INTERRUPTS:
            while True:
                try:
                    loop.call_soon_threadsafe(cancel)
                    break
                except _INTERRUPTS:
                    continue  # interrupted again before the cancel was on its way: send it again
            while True:
                try:
                    done.wait()  # the job's cleanup: stopping parts, keeping partials, saving the index
                    break
                except _INTERRUPTS:
                    continue  # a second Ctrl-C (or SIGTERM) does not abandon the cleanup
            task = state["task"]
            if task is not None and not task.cancelled():
                task.exception()  # retrieved (an error in the cleanup): the interruption is what is reported
            raise
        if state["error"] is not None:
            raise state["error"]
        task = state["task"]
        if task.cancelled() and self._closed:
            raise RuntimeError("the Mirror was closed while this call ran; its job was cancelled")
        return task.result()

    def stop(self, before: Callable[[], Awaitable[None]] | None = None) -> None:
        """Cancel whatever runs on the loop and wait for it (each job cleans up as on Ctrl-C),
        then await `before()` (closing connections) and stop the loop. Later calls raise.
        From the loop thread itself (a Mirror collected there) it is done asynchronously."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def finish(stop_after: bool) -> None:
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            try:
                if before is not None:
                    await before()
            finally:
                if stop_after:
                    loop.stop()

        if threading.current_thread() is thread:
            loop.create_task(finish(True))
            return
        try:
            asyncio.run_coroutine_threadsafe(finish(False), loop).result(timeout=60)
        except Exception:  # noqa: BLE001 - closing is best effort; the loop is stopped anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
