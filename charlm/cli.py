"""What every job shares: the error convention (one line on stderr, exit 2) and
options built from parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable

from charlm.errors import CharlmError, chain


def _charlm_cause(error: BaseException) -> CharlmError | None:
    """Ray wraps errors raised inside workers; find ours in the chain. Some
    wrappers keep only the text (Ray Data's ActorDiedError for an actor's
    constructor): our error is then its line there."""
    wrapped = list(chain(error))
    # The innermost of ours: a RayTaskError wrapping a CharlmError is one
    # too, with the remote traceback as its message.
    found = next((e for e in reversed(wrapped) if isinstance(e, CharlmError)
                  and not _from_ray(e)), None)
    for e in wrapped if found is None else ():
        lines = re.findall(r"charlm\.errors\.CharlmError: (.+)", str(e))
        if lines:
            return CharlmError(lines[-1].strip())
    return found


def _from_ray(error: BaseException) -> bool:
    """A Ray wrapper (a job that never imported Ray, the quick sampler, has none)."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    return ray_exceptions is not None and isinstance(error, ray_exceptions.RayError)


def run_job(main: Callable[[], object]) -> None:
    """Run a job's body under the error convention: a CharlmError, or one that
    Ray wrapped, becomes `error: <message>` on stderr and exit status 2;
    Ctrl-C exits 130; any other error is a bug and keeps its traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        err = _charlm_cause(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def job_main(name: str, doc: str | None,
             add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], object], argv: list[str] | None) -> None:
    """`python -m jobs.<name>`: parse its flags, run it under run_job."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{name}", description=doc)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_job(lambda: run(args))


def options_from(cls: type, args: argparse.Namespace):
    """A job's options dataclass from its parsed flags (field names are the flags' dests)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
