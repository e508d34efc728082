"""Shared bits of the benchmarks: percentiles and model factories."""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)} p50={percentile(ms, 50):.3f} ms p99={percentile(ms, 99):.3f} ms "
        f"max={max(ms):.3f} ms mean={statistics.fmean(ms):.3f} ms"
    )


@contextlib.contextmanager
def server_process(chunk_delay: float = 0.0, first_token_delay: float = 0.0) -> Iterator[str]:
    """Serve the local OpenAI-compatible server in its own process; yield its base URL.

    A separate process keeps the server's work off the measured process's GIL.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kern.testing.openai_server",
            "--port",
            "0",
            "--chunk-delay",
            str(chunk_delay),
            "--first-token-delay",
            str(first_token_delay),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"OPENAI_BASE_URL=(\S+)", line)
        if match is None:
            raise RuntimeError(f"the server did not start: {line!r}")
        # Keep reading its output (the access log): a full pipe would stall the server.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)
