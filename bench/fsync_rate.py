#!/usr/bin/env python3
"""The disk's raw sync rate: append a small record and fdatasync it, in a loop.

This is the physical reference for the store's journal, which appends a batch of JSON
lines and fdatasyncs once per commit: one commit can never be faster than one of these.
The file is created in the directory given, which must be on the same filesystem as the
data directories being benchmarked. Prints one JSON object:
{"syncs": n, "seconds": s, "rate": n/s, "p50_ms": ..., "p99_ms": ...}.
"""

import argparse
import json
import os
import sys
import time

# About one journal line (a purchase of one or two tickets).
RECORD = b"x" * 255 + b"\n"


def measure(directory: str, seconds: float) -> dict:
    path = os.path.join(directory, "fsync-rate.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    latencies = []
    try:
        # One sync first, so the file's creation is not in the figures.
        os.write(fd, RECORD)
        os.fsync(fd)
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            os.write(fd, RECORD)
            os.fdatasync(fd)
            after = time.perf_counter()
            latencies.append(after - now)
            now = after
        elapsed = now - start
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()

    def pct(p: float) -> float:
        return 1000.0 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "syncs": len(latencies),
        "seconds": round(elapsed, 3),
        "rate": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="directory on the data filesystem")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to loop")
    args = parser.parse_args()
    json.dump(measure(args.dir, args.seconds), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
