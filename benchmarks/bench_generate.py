"""Benchmark of `logpipe generate`: MB/s and lines/s on one core, and peak memory (flat with size)."""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from logpipe.generator import generate, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1GB")
    ap.add_argument("--format", default="seed", choices=["seed", "clf", "combined"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.log"
        t = time.monotonic()
        cpu = time.process_time()
        truth = generate(out, size_bytes=parse_size(args.size), seed=1, fmt=args.format, progress=False)
        wall, cpu = time.monotonic() - t, time.process_time() - cpu
    result = {"size": args.size, "format": args.format, "bytes": truth.total_bytes, "lines": truth.total_lines,
              "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "mb_per_s": round(truth.total_bytes / 1e6 / wall, 1),
              "lines_per_s": round(truth.total_lines / wall),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
