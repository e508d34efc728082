"""The background event loop that runs sync callers' runs.

The run loop is written once, async. `agent.run()` from plain threads hands
its coroutine to this loop (one daemon thread per process, started on first
use) and reads events through a thread-safe queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kern.exceptions import UsageError

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's kern loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=serve, name="kern-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the kern loop; safe from any thread."""
    loop = background_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise UsageError("a blocking kern call was made on kern's own loop: use the async API")
    return asyncio.run_coroutine_threadsafe(coro, loop)


def call(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the kern loop and block until it returns."""
    return submit(coro).result()
