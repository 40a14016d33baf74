#!/usr/bin/env python3
"""The disk's own write latency during a measurement.

    bench/fsync-probe.py DIR SECONDS

Every 20 ms for SECONDS, writes 4 KiB to a file in DIR and fdatasyncs it; prints
WORST/BEYOND: the slowest write + fdatasync, and the sum of what the flushes took
beyond 30 ms, in ms. Every durable answer waits for a flush: a write that arrived in
the first L - 30 ms of a stall of L ms could not be durable within 30 ms. Once BEYOND
exceeds 1% of the window (an underestimate: stalls between samples are missed), a p99
of 30 ms is out of reach for any durable store, so a miss then tells about the disk,
not the gateway. (This VM's disk stalls now and then: worst idle flushes of 75-127 ms in 20-60 s,
170-575 ms in some benchmark windows.)
"""
import os
import sys
import time

TARGET = 0.030

directory, seconds = sys.argv[1], float(sys.argv[2])
path = os.path.join(directory, f"fsync-probe.{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
block = b"\0" * 4096
worst = beyond = 0.0
end = time.monotonic() + seconds
try:
    while time.monotonic() < end:
        start = time.monotonic()
        os.pwrite(fd, block, 0)
        os.fdatasync(fd)
        took = time.monotonic() - start
        worst = max(worst, took)
        beyond += max(0.0, took - TARGET)
        time.sleep(0.02)
finally:
    os.close(fd)
    os.unlink(path)
print(f"{worst * 1000:.1f}/{beyond * 1000:.0f}")
