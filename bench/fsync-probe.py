#!/usr/bin/env python3
"""The disk's own write latency during a measurement.

    bench/fsync-probe.py DIR SECONDS

Every 20 ms for SECONDS, writes 4 KiB to a file in DIR and fdatasyncs it; prints the
slowest write + fdatasync in ms. Every durable answer waits for such a flush, so a
latency target missed in a window where the disk alone stalled for longer than the
target tells about the disk, not the gateway (this VM's disk stalls for 50-500 ms now
and then even when idle).
"""
import os
import sys
import time

directory, seconds = sys.argv[1], float(sys.argv[2])
path = os.path.join(directory, f"fsync-probe.{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
block = b"\0" * 4096
worst = 0.0
end = time.monotonic() + seconds
try:
    while time.monotonic() < end:
        start = time.monotonic()
        os.pwrite(fd, block, 0)
        os.fdatasync(fd)
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.02)
finally:
    os.close(fd)
    os.unlink(path)
print(f"{worst * 1000:.1f}")
