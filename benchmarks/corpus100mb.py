"""A large corpus built offline, for measuring memory at scale: CPython's own
pydoc topics (the python-docs corpus), paragraphs shuffled with a seeded RNG
and concatenated until the file reaches the wanted size.

    .venv/bin/python -m benchmarks.corpus100mb /tmp/big.txt --mb 100

Shuffling each round keeps the text from being one block repeated verbatim
(which a window dataset or a compressor could exploit), while staying
deterministic: the same seed and size give the same bytes.
"""

from __future__ import annotations

import argparse
import random


def paragraphs() -> list[str]:
    """Non-empty paragraphs of pydoc_data.topics (~460K characters in all)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def build(path: str, mb: float = 100.0, seed: int = 0) -> int:
    """Write about `mb` megabytes (10**6 bytes) of UTF-8 text to path; returns bytes written."""
    target = int(mb * 1_000_000)
    paras = paragraphs()
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(paras)
            for p in paras:
                chunk = p + "\n\n"
                f.write(chunk)
                written += len(chunk.encode("utf-8"))
                if written >= target:
                    break
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus100mb",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="output file (keep it out of the repository)")
    parser.add_argument("--mb", type=float, default=100.0, help="size in megabytes (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = build(args.path, args.mb, args.seed)
    print(f"wrote {n:,} bytes to {args.path}")


if __name__ == "__main__":
    main()
