"""An asyncio event loop in a daemon thread, for synchronous callers of asyncio code.

The synchronous clients (:class:`~splitcomp.runtime.SplitClient`,
:class:`~splitcomp.runtime.llm.RemoteLM`) and :class:`~splitcomp.runtime.BackgroundServer`
each own one. Every call into the loop waits at most a timeout, so a loop that hangs shows up
as a :class:`TimeoutError` in the caller instead of a frozen program.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: how long :meth:`LoopThread.stop` waits for the thread to end
JOIN_TIMEOUT_S = 10.0


class LoopThread:
    """A new event loop running forever in a daemon thread named ``name``.

    :meth:`run` submits a coroutine from any thread and waits for its result (at most
    ``timeout_s``); :meth:`call` runs a plain function on the loop; :meth:`stop` runs an
    optional last coroutine, stops the loop and joins the thread.
    """

    def __init__(self, name: str, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result (``TimeoutError`` past
        ``timeout_s``, default the constructor's; the coroutine is then cancelled)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(self.timeout_s if timeout_s is None else timeout_s)
        except TimeoutError:
            fut.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """``fn(*args)`` on the loop's thread (to read or change loop-owned state safely)."""
        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout_s)

    def stop(self, last: Coroutine[Any, Any, Any] | None = None,
             timeout_s: float | None = None) -> None:
        """Run ``last`` (if given), then stop the loop and join the thread. Idempotent."""
        if not self._thread.is_alive():
            if last is not None:
                last.close()
            return
        try:
            if last is not None:
                self.run(last, timeout_s)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(JOIN_TIMEOUT_S)
