"""A test server's own event loop in a thread: started by `with`, stopped (and its loop closed)
when the block ends, so the test that started it always stops it."""

from __future__ import annotations

import asyncio
import threading


class LoopThread:
    """Mixin: the class defines `async _start()` (bind, set `self.url`) and `async _shutdown()`,
    and calls `_init_loop(name)` from its constructor."""

    def _init_loop(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.url = ""

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self._thread.name} did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
