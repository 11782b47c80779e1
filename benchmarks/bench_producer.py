"""Producer throughput on the local broker: kafka-python, confluent-kafka and Kafka's Java ProducerPerformance,
same record count, same average record size, same acks/compression/batching."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from logpipe.bench import java_producer_perf
from logpipe.config import load_settings
from logpipe.procstats import ResourceSampler
from logpipe.topics import delete_topics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    s = load_settings()
    results = {}
    topics = []
    try:
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "bench.log"
            subprocess.run([sys.executable, "-m", "logpipe", "generate", "--lines", str(args.lines), "--seed", "1",
                            "--out", str(log)], check=True, capture_output=True)
            size = log.stat().st_size
            avg = round(size / args.lines) - 1  # without the newline
            for client in ("confluent", "kafka-python"):
                topics.append(f"bench-{client}-{uuid.uuid4().hex[:6]}")
                env = {**os.environ, "LOGPIPE_TOPIC": topics[-1], "LOGPIPE_PRODUCER_STATE_DIR": str(Path(d) / "pos")}
                r = subprocess.run([sys.executable, "-m", "logpipe", "produce", str(log), "--client", client], env=env,
                                   capture_output=True, text=True, check=True)
                summ = json.loads(r.stdout.strip().splitlines()[-1])
                results[client] = {"records_per_s": round(summ["lines"] / summ["seconds"]),
                                   "mb_per_s": round(summ["bytes"] / 1e6 / summ["seconds"], 1)}
            topics.append(f"bench-java-{uuid.uuid4().hex[:6]}")
            sampler = ResourceSampler().start()
            java = java_producer_perf(s, topics[-1], args.lines, log, sampler, Path(d))  # the same as `logpipe bench`
            sampler.stop()
        results["java ProducerPerformance"] = {"records_per_s": round(java.extra["records_per_s"]),
                                               "mb_per_s": round(java.extra["mb_per_s"], 1),  # MB/s (bench.py)
                                               "wall_s": round(java.wall_s, 1), "payload": java.extra["payload"]}
    finally:
        delete_topics(s, topics)  # each holds the whole log, also after a failure
    results["setup"] = {"lines": args.lines, "avg_record_bytes": avg, "compression": s.compression,
                        "batch_size": s.batch_size, "linger_ms": s.linger_ms, "acks": "all"}
    results["ratios"] = {k: round(results[k]["records_per_s"] / results["java ProducerPerformance"]["records_per_s"], 3)
                         for k in ("confluent", "kafka-python")}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
