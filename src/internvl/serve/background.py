"""The one daemon thread each server role runs (the engine worker, the vision encoder): start, stop, alive."""

from __future__ import annotations

import threading


class BackgroundThread:
    """Runs `self._run` on a daemon thread. A subclass sets `_cond` (a Condition its loop waits on),
    `_stopping` and `_thread` in its __init__, names the thread, and ends `_run` once `_stopping` is set."""

    thread_name = "internvl"
    _cond: threading.Condition
    _stopping: bool
    _thread: threading.Thread | None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        raise NotImplementedError
