#!/usr/bin/env python3
"""Times python-hl7's hl7.parse() on bench/hl7-parse/messages/*.hl7.

Prints a Markdown row like the Rust benchmark, or with --ns-only just the median
nanoseconds per message (for ./run to feed into the Rust table).
"""
import pathlib
import statistics
import sys
import time

import hl7

ROUNDS = 11
ROUND_SECONDS = 0.25


def load():
    here = pathlib.Path(__file__).resolve().parent / "messages"
    # newline="" keeps the CR segment terminators as they are on disk.
    return [p.open(newline="").read() for p in sorted(here.glob("*.hl7"))]


def run(messages, iterations):
    start = time.perf_counter()
    count = len(messages)
    for i in range(iterations):
        msg = hl7.parse(messages[i % count])
        len(msg)
    return time.perf_counter() - start


def main():
    messages = load()
    assert messages, "no messages/*.hl7"
    for m in messages:
        parsed = hl7.parse(m)
        segments = [s for s in m.split("\r") if s]
        assert len(parsed) == len(segments), "python-hl7 saw a different segment count"
    iterations = 16
    while run(messages, iterations) < 0.05:
        iterations *= 2
    per = run(messages, iterations) / iterations
    iterations = max(1, int(ROUND_SECONDS / per))
    samples = [run(messages, iterations) * 1e9 / iterations for _ in range(ROUNDS)]
    ns = statistics.median(samples)
    if "--ns-only" in sys.argv:
        print(f"{ns:.1f}")
        return
    avg_bytes = sum(len(m.encode()) for m in messages) / len(messages)
    print("| parser | µs/msg | msgs/s | MB/s |")
    print("|---|---:|---:|---:|")
    print(f"| python-hl7 {hl7.__version__} (hl7.parse) | {ns / 1e3:.3f} | {1e9 / ns:.0f} | {avg_bytes * 1e3 / ns:.1f} |")


if __name__ == "__main__":
    main()
