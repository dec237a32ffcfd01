"""Fork safety: ``fork()`` waits until no thread of ours is inside SQLite or a driver.

A thread inside SQLite holds its mutexes. Forked at that moment, the child inherits
them locked, and its first ``sqlite3.connect()`` waits forever (gunicorn
``--preload`` and Celery prefork fork while the exporter's threads may be writing
or checkpointing). Every such section runs inside ``FORK_GUARD.busy()``; a fork
waits for the sections in flight (at most ``WAIT_S``), and new ones wait for it.
``in_forked_children`` registers what an object must redo in a child (threads,
pipes and pooled sockets are its parent's).
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

WAIT_S = 5.0  # a fork never waits longer than this for a write in flight


class ForkGuard:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A section that must not be cut in two by a fork."""
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._forking = True
            self._cond.wait_for(lambda: not self._active, WAIT_S)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        self._reset()  # the threads that were inside are not in this process


FORK_GUARD = ForkGuard()

if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(
        before=FORK_GUARD.before_fork,
        after_in_parent=FORK_GUARD.after_fork_in_parent,
        after_in_child=FORK_GUARD.after_fork_in_child,
    )


def in_forked_children(owner: Any, reset: Callable[[Any], None]) -> None:
    """Call ``reset(owner)`` in every forked child while ``owner`` is alive (it is held weakly).

    For what a child must not share with its parent: threads, pipes, pooled sockets.
    """
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - not on Windows
        return
    ref = weakref.ref(owner)

    def after_in_child() -> None:
        live = ref()
        if live is not None:
            reset(live)

    os.register_at_fork(after_in_child=after_in_child)
