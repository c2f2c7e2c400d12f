"""The one error type users see: a one-line message naming the problem and the fix."""


class CharlmError(Exception):
    """Bad input or environment. Jobs print `error: <message>` and exit 2."""


def first_line(e: BaseException) -> str:
    """A library error squeezed into one line, for a CharlmError's message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
