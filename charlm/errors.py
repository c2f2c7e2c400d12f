"""The one error type users see, a one-line message naming the problem and the
fix, and the walk through the errors Ray wraps around it."""

from __future__ import annotations

from collections.abc import Iterator


class CharlmError(Exception):
    """Bad input or environment. Jobs print `error: <message>` and exit 2."""


def first_line(e: BaseException) -> str:
    """A library error squeezed into one line, for a CharlmError's message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and every error it wraps, each once, nearest first: causes and
    contexts, an ActorDiedError's `.cause` (an actor constructor's error),
    a Train ControllerError's `controller_failure` and a WorkerGroupError's
    `worker_failures` (each worker's error, by rank)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, getattr(e, "cause", None), getattr(e, "controller_failure", None),
                 e.__context__, *getattr(e, "worker_failures", {}).values()]
