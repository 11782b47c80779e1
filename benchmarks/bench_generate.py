"""Benchmark of `logpipe generate`: MB/s and lines/s (wall and per CPU second, one core) and peak memory.

Writes under /tmp (never the repo) and deletes the output. Example: `.venv/bin/python benchmarks/bench_generate.py
--size 1GB`. On a shared machine the wall figure depends on the load; the CPU figure is what one core does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from logpipe.generator import generate, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1GB")
    ap.add_argument("--format", default="seed", choices=["seed", "clf", "combined"])
    ap.add_argument("--dir", default="/tmp", help="where the temporary output goes")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        out = Path(d) / "bench.log"
        t = time.monotonic()
        cpu = time.process_time()
        truth = generate(out, size_bytes=parse_size(args.size), seed=1, fmt=args.format, progress=False)
        wall, cpu = time.monotonic() - t, time.process_time() - cpu
    mb = truth.total_bytes / 1e6
    result = {"size": args.size, "format": args.format, "bytes": truth.total_bytes, "lines": truth.total_lines,
              "incidents": len(truth.incidents), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
              "mb_per_s": round(mb / wall, 1), "mb_per_cpu_s": round(mb / cpu, 1),
              "lines_per_s": round(truth.total_lines / wall), "lines_per_cpu_s": round(truth.total_lines / cpu),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "load_avg_1m_before": round(load_before, 2), "cpus": os.cpu_count()}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
