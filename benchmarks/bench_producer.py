"""Producer throughput on the local broker: kafka-python, confluent-kafka and Kafka's Java ProducerPerformance,
same record count, same average record size, same acks/compression/batching."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from logpipe.config import load_settings
from logpipe.stack.jars import classpath
from logpipe.stack.services import Layout, java_binary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    s = load_settings()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "bench.log"
        subprocess.run([sys.executable, "-m", "logpipe", "generate", "--lines", str(args.lines), "--seed", "1",
                        "--out", str(log)], check=True, capture_output=True)
        size = log.stat().st_size
        avg = round(size / args.lines) - 1  # without the newline
        for client in ("confluent", "kafka-python"):
            env = {**os.environ, "LOGPIPE_TOPIC": f"bench-{client}-{uuid.uuid4().hex[:6]}",
                   "LOGPIPE_PRODUCER_STATE_DIR": str(Path(d) / "pos")}
            r = subprocess.run([sys.executable, "-m", "logpipe", "produce", str(log), "--client", client], env=env,
                               capture_output=True, text=True, check=True)
            summ = json.loads(r.stdout.strip().splitlines()[-1])
            results[client] = {"records_per_s": round(summ["lines"] / summ["seconds"]),
                               "mb_per_s": round(summ["bytes"] / 1e6 / summ["seconds"], 1)}
    lay = Layout(s.run_dir)
    topic = f"bench-java-{uuid.uuid4().hex[:6]}"
    cmd = [java_binary(s), "-Xmx1g", f"-Dlog4j2.configurationFile={lay.conf / 'kafka' / 'log4j2.properties'}",
           "-cp", classpath(lay.jars / "kafka"), "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
           "--num-records", str(args.lines), "--record-size", str(avg), "--throughput", "-1", "--producer-props",
           f"bootstrap.servers={s.kafka_address}", "acks=all", "enable.idempotence=true",
           f"compression.type={s.compression}", f"batch.size={s.batch_size}", f"linger.ms={s.linger_ms}"]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", out)
    results["java ProducerPerformance"] = {"records_per_s": round(float(m[-1][1])), "mb_per_s": float(m[-1][2]),
                                           "wall_s": round(time.monotonic() - t, 1)}
    results["setup"] = {"lines": args.lines, "avg_record_bytes": avg, "compression": s.compression,
                        "batch_size": s.batch_size, "linger_ms": s.linger_ms, "acks": "all"}
    results["ratios"] = {k: round(results[k]["records_per_s"] / results["java ProducerPerformance"]["records_per_s"], 3)
                         for k in ("confluent", "kafka-python")}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
