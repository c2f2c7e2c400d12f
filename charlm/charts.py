"""Charts as PNG files, local or on object storage, drawn with matplotlib
without a display."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

from charlm import storage
from charlm.errors import CharlmError, first_line


def pyplot() -> Any:
    """matplotlib.pyplot on its file-only backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def focus(ax: Any, values: Iterable[float | None]) -> None:
    """Set ax's y-range to the lowest 90% of the finite values, so that a
    diverged curve does not squash the others; no values: left as it is."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if finite:
        low, high = finite[0], finite[min(len(finite) - 1, int(0.9 * (len(finite) - 1) + 0.5))]
        pad = 0.05 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)


def save(fig: Any, uri: str, fix: str) -> str:
    """Write fig as a PNG at uri (local, s3://, gs://) and close it; an
    unwritable place is one CharlmError ending in `fix`."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    fs, path = storage.resolve(uri)
    try:
        with fs.open_output_stream(path) as f:
            f.write(buf.getvalue())
    except OSError as e:
        raise CharlmError(f"chart {uri} cannot be written ({first_line(e)}); {fix}") from e
    return uri
