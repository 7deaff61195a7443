"""A function run in a daemon thread while the caller goes on (SQLite and psycopg release the GIL
while they work, so on two cores the two really run at once)."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Background:
    """``fn()`` started now in its own thread; :meth:`result` waits for it and returns its value,
    or raises what it raised. The thread is a daemon: an interrupted command does not wait."""

    def __init__(self, fn: Callable[[], Any], name: str):
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:     # noqa: BLE001  (handed to the caller by result())
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
