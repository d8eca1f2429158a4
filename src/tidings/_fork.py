"""Fork support: locks that ``os.fork()`` never leaves held in the child.

After a fork only the forking thread exists in the child; a lock that
another thread held at that moment would stay held forever. A
:class:`ForkSafeLock` is taken before the fork (so no other thread is inside
it) and released on both sides afterwards. Hooks run before the fork in the
reverse order of creation, so locks created later (by modules imported
later) are taken first: create outer locks after inner ones.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A module-level lock, safe to hold while another thread forks."""

    __slots__ = ("_held", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )

    def _before_fork(self) -> None:
        # Bounded: a thread stuck while holding the lock must not hang fork().
        self._held = self._lock.acquire(timeout=5.0)

    def _after_fork_in_parent(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        # A fresh lock whether or not the fork got hold of the old one.
        self._held = False
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
