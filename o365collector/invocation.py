"""Tying the threads the collector starts to the Functions invocation that started them.

The Azure Functions Python worker sends a log record to the host as part of an invocation (and so to
Application Insights and the portal's Monitor tab) only when the thread that emits it carries the
invocation id in the worker's thread-local storage, ``context.thread_local_storage.invocation_id``.
The worker sets it on the thread that runs the function and nowhere else, so what the lister's pool
threads log (every per-stream ``lister run complete`` line) would be sent without an invocation.

``function_app.py`` opens ``tied(context.thread_local_storage, context.invocation_id)`` around each
call into the package. Work handed to another thread takes that tie along: ``bind(fn)`` (for a thread
we start) and ``TiedThreadPool`` (for a pool, each submitted task) set the id on the running thread for
the task's duration and put the previous value back afterwards, so a pool thread shared by the whole
process (the content validators, the HTTP sink's compressors) carries each task's own invocation and
keeps none after it. Outside the Functions host (command line, tests, containers) nothing is tied and
these helpers cost nothing. The package never imports ``azure.functions``: the storage is any object
that takes attributes, the worker's being a ``threading.local``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

ThreadTie = Callable[[], Callable[[], None]]
"""Ties the calling thread to an invocation; returns what unties it again."""

# A context variable, not a global: the worker runs several invocations at once (queue batches), each
# on its own thread, and each must hand its own id to the threads it starts.
_current: ContextVar[ThreadTie | None] = ContextVar("o365collector_invocation_tie", default=None)


def thread_tie(storage: object, invocation_id: str) -> ThreadTie:
    """The tie the worker documents: ``storage.invocation_id = invocation_id`` on the running thread."""

    # setattr: the storage is typed ``object`` (the worker's is a ``threading.local``, attributes made up as set).
    def tie() -> Callable[[], None]:
        previous = getattr(storage, "invocation_id", None)
        setattr(storage, "invocation_id", invocation_id)  # noqa: B010

        def untie() -> None:
            setattr(storage, "invocation_id", previous)  # noqa: B010

        return untie

    return tie


@contextmanager
def tied(storage: object, invocation_id: str) -> Iterator[None]:
    """Within this block, work handed to other threads (``bind``, ``TiedThreadPool``) joins the invocation.

    The calling thread is tied as well (the worker already did that; doing it again is harmless, and
    makes the block work under any caller)."""
    tie = thread_tie(storage, invocation_id)
    untie = tie()
    token = _current.set(tie)
    try:
        yield
    finally:
        _current.reset(token)
        untie()


def bind(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` tied to the current invocation (if any) on whichever thread runs it, and for threads it starts."""
    tie = _current.get()
    if tie is None:
        return fn

    @functools.wraps(fn)
    def run_tied(*args: P.args, **kwargs: P.kwargs) -> R:
        untie = tie()
        token = _current.set(tie)
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)
            untie()

    return run_tied


class TiedThreadPool(ThreadPoolExecutor):
    """A thread pool whose every task runs tied to the invocation that submitted it.

    Tying per task rather than per thread (an ``initializer``) is what lets a pool created once per
    process serve one invocation after another, or several at once."""

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        return super().submit(bind(fn), *args, **kwargs)
