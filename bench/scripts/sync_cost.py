#!/usr/bin/env python3
"""Latency of the sync primitives a log append can end with, on the disk under DIR.

Each round writes SIZE bytes with pwrite, then calls the primitive; p50/p99 are over
ROUNDS rounds. `append` writes past the end of the file (new blocks, the file grows, as
when sled starts a new segment); `overwrite` rewrites blocks written and fsynced before
(as when sled reuses a segment). sled 0.34's flush is `sync_file_range` (WAIT_BEFORE |
WRITE | WAIT_AFTER); `fdatasync`/`fsync` are what power-loss durability would need.

usage: sync_cost.py [DIR] [ROUNDS]
"""
import ctypes
import os
import statistics
import sys
import tempfile
import time

SYNC_FILE_RANGE_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
SIZES = (4096, 65536)

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def sync_file_range(fd, offset, size):
    if libc.sync_file_range(fd, offset, size, SYNC_FILE_RANGE_ALL) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


PRIMITIVES = {
    "none": lambda fd, offset, size: None,
    "sync_file_range": sync_file_range,
    "fdatasync": lambda fd, offset, size: os.fdatasync(fd),
    "fsync": lambda fd, offset, size: os.fsync(fd),
}


def measure(directory, mode, size, primitive, rounds):
    data = os.urandom(size)
    with tempfile.NamedTemporaryFile(dir=directory) as file:
        fd = file.fileno()
        if mode == "overwrite":
            for round_idx in range(rounds):
                os.pwrite(fd, data, round_idx * size)
            os.fsync(fd)
        latencies = []
        for round_idx in range(rounds):
            started = time.perf_counter()
            os.pwrite(fd, data, round_idx * size)
            PRIMITIVES[primitive](fd, round_idx * size, size)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return p50 * 1e6, p99 * 1e6


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    print(f"{rounds} rounds per row in {directory}")
    print(f"{'mode':>9} {'bytes':>6} {'primitive':>15} {'p50 us':>8} {'p99 us':>8}")
    for mode in ("append", "overwrite"):
        for size in SIZES:
            for primitive in PRIMITIVES:
                p50, p99 = measure(directory, mode, size, primitive, rounds)
                print(f"{mode:>9} {size:>6} {primitive:>15} {p50:>8.0f} {p99:>8.0f}")


if __name__ == "__main__":
    main()
