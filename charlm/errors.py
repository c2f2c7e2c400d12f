"""The one error type users see: a one-line message naming the problem and the fix."""


class CharlmError(Exception):
    """Bad input or environment. Jobs print `error: <message>` and exit 2."""
