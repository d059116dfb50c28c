#!/usr/bin/env python3
"""Estimates what detecting block-level rollback would cost kmsfs's writes
(docs/FORMAT.md, "What per-block authentication cannot see"). Asserts nothing.

It replays the backing-file I/O of one random 4 KiB write, as kmsfs does it
today (one 4124-byte stored block), and as a per-block counter scheme would
need it: the block, its 8-byte counter in a table, and a 32-byte tree root in
the header; durable variants sync after every write, and the crash-safe one
first writes the update to a journal and syncs it (as dm-integrity does),
since block, counter and root must change together or a crash leaves correct
blocks that fail authentication. Tree hashing is left out (it only adds).

    scripts/rollback_cost.py            # in a temporary directory under /var/tmp
    ROLLBACK_DIR=/mnt/x scripts/rollback_cost.py
"""
import os
import random
import statistics
import tempfile
import time

STORED = 4124  # a stored block: 12 nonce + 4096 + 16 tag
BLOCKS = (64 << 20) // 4096  # a 64 MiB file
TABLE = 1024 + BLOCKS * STORED  # where the counter table would start


def run(d, scheme, sync, n):
    fd = os.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, TABLE + BLOCKS * 8)
    jfd = os.open(os.path.join(d, "j"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fsync(fd)
    rnd = random.Random(1)
    block = os.urandom(STORED)
    t0 = time.perf_counter()
    for _ in range(n):
        b = rnd.randrange(BLOCKS)
        if scheme == "journal":
            os.pwrite(jfd, block + bytes(40), 0)
            os.fdatasync(jfd)
        os.pwrite(fd, block, 1024 + b * STORED)
        if scheme != "today":
            os.pwrite(fd, b"\0" * 8, TABLE + b * 8)
            os.pwrite(fd, b"\0" * 32, 64)
        if sync:
            os.fdatasync(fd)
    us = (time.perf_counter() - t0) / n * 1e6
    os.close(fd)
    os.close(jfd)
    return us


def main():
    base = os.environ.get("ROLLBACK_DIR", "/var/tmp")
    rounds = 5
    cases = [
        ("no sync", "today", False, 20000),
        ("no sync", "counters", False, 20000),
        ("fdatasync each", "today", True, 2000),
        ("fdatasync each", "counters", True, 2000),
        ("fdatasync each", "journal", True, 2000),
    ]
    results = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(dir=base) as d:
        for _ in range(rounds):  # interleaved, so drift hits every case alike
            for c in cases:
                results[c].append(run(d, c[1], c[2], c[3]))
    print(f"random 4 KiB writes to a 64 MiB backing file in {base}, median of {rounds} runs")
    print("| syncing | scheme | us per write | vs today |")
    print("|---|---|---:|---:|")
    today = {}
    for c in cases:
        med = statistics.median(results[c])
        today.setdefault(c[0], med)
        print(f"| {c[0]} | {c[1]} | {med:.1f} | {med / today[c[0]]:.2f}x |")


if __name__ == "__main__":
    main()
