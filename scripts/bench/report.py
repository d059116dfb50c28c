#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw measurements into the table (medians, ratios to
plain), a CSV and JSON summary and an SVG bar chart of the ratios.

    report.py RAW.csv REQUESTS.txt RESULTS_DIR STAMP NOTE
"""
import csv
import json
import statistics
import sys

ROWS = [  # key, label, higher is better
    ("seqwrite", "sequential write, bs=1M, end_fsync (MiB/s)", True),
    ("seqread", "sequential read, caches dropped (MiB/s)", True),
    ("randwrite", "random write 4 KiB, buffered, end_fsync (IOPS)", True),
    ("randread", "random read 4 KiB, cached (IOPS)", True),
    ("untar", "tar -x of the tree, then sync (s)", False),
    ("lsR", "ls -lR of the tree, second run (s)", False),
    ("catall", "cat of every file, caches dropped (s)", False),
    ("rmtree", "rm -rf of the tree (s)", False),
]
TARGETS = ["plain", "kmsfs", "kmsfs-nowb", "gocryptfs"]
SHOWN = ["gocryptfs", "kmsfs", "kmsfs-nowb"]
# The goal per row, as text and as a test of kmsfs's ratio k (to
# plain) and gocryptfs's g in the same run.
GOALS = {
    "seqwrite": (">= 0.90", lambda k, g: k >= 0.90),
    "seqread": (">= 0.90", lambda k, g: k >= 0.90),
    "randwrite": (">= 0.50", lambda k, g: k >= 0.50),
    "randread": (">= 0.90", lambda k, g: k >= 0.90),
    "untar": ("<= gocryptfs/2 and <= 5x", lambda k, g: k <= 5 and g is not None and k <= g / 2),
    "lsR": ("<= 2x", lambda k, g: k <= 2),
    "rmtree": ("<= 1.5x", lambda k, g: k <= 1.5),
}


def main():
    raw, reqs, out, stamp, note = sys.argv[1:6]
    vals = {}
    for r in csv.DictReader(open(raw)):
        vals.setdefault((r["target"], r["row"]), []).append(r["value"])
    med = {}
    for k, v in vals.items():
        nums = [float(x) for x in v if x not in ("", "NA")]
        med[k] = statistics.median(nums) if nums else None
    table = []
    for key, label, higher in ROWS:
        p = med.get(("plain", key))
        row = {"row": key, "label": label, "higher_is_better": higher}
        for t in TARGETS:
            m = med.get((t, key))
            row[t] = m
            row[t + "_ratio"] = (m / p) if m is not None and p else None
            row[t + "_all"] = vals.get((t, key), [])
        table.append(row)
    rss = {t: med.get((t, "peakrss")) for t in SHOWN}
    requests = []
    for line in open(reqs):
        row, total, ops = line.rstrip("\n").split("\t")
        requests.append({"row": row, "total": int(total), "by_opcode": ops})

    def fmt(v):
        if v is None:
            return "NA"
        return f"{v:.3f}" if v < 100 else f"{v:.0f}"

    print(f"\n== median of the rounds; ratio to plain ({note})")
    print("throughput rows: ratio > 1 is faster than plain; time rows: ratio < 1 is faster\n")
    print("| workload | plain | gocryptfs | kmsfs | kmsfs, no wb | goal | met |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        cells = [fmt(r["plain"])]
        for t in SHOWN:
            ratio = r[t + "_ratio"]
            x = "" if r["higher_is_better"] else "x"
            cells.append(f"{fmt(r[t])} ({ratio:.2f}{x})" if ratio is not None else "NA")
        goal, test = GOALS.get(r["row"], ("", None))
        k, g = r["kmsfs_ratio"], r["gocryptfs_ratio"]
        met = "" if test is None or k is None else ("yes" if test(k, g) else "no")
        r["goal"], r["met"] = goal, met
        print(f"| {r['label']} | " + " | ".join(cells) + f" | {goal} | {met} |")
    rss_met = "" if rss["kmsfs"] is None else ("yes" if rss["kmsfs"] <= 64 else "no")
    print(f"| peak RSS of the mount (MiB) | | {fmt(rss['gocryptfs'])} | {fmt(rss['kmsfs'])} "
          f"| {fmt(rss['kmsfs-nowb'])} | <= 64 | {rss_met} |")
    print("\n== FUSE requests kmsfs served per workload (round 1, the daemon's counters;"
          " -nowb: with -o no_writeback_cache)\n")
    print("| workload | requests | by opcode |")
    print("|---|---|---|")
    for q in requests:
        print(f"| {q['row']} | {q['total']} | {q['by_opcode']} |")

    # BENCH_V1=1: block format 2 (a new tree) against format 1 (an older tree).
    formats = pair(vals, med, fmt, "kmsfs-v1", "kmsfs",
                   "kmsfs block format 2 (new tree) against 1 (older tree)", "format 1", "format 2")
    # BENCH_NAMES=1: encrypted names (the default) against -o plaintextnames.
    names = pair(vals, med, fmt, "kmsfs-plainnames", "kmsfs",
                 "kmsfs encrypted names (default) against -o plaintextnames",
                 "plain names", "encrypted names")
    # BENCH_URING=1: -o io_uring (FUSE over io_uring) against /dev/fuse (the default).
    uring = pair(vals, med, fmt, "kmsfs", "kmsfs-uring",
                 "kmsfs through FUSE over io_uring (-o io_uring) against /dev/fuse (default)",
                 "/dev/fuse", "io_uring")
    # BENCH_BASE=PATH: this build against another (kmsfs-base), both by default.
    base = pair(vals, med, fmt, "kmsfs-base", "kmsfs",
                "kmsfs, this build against BENCH_BASE's build", "base build", "this build")

    with open(f"{out}/summary-{stamp}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label"] + TARGETS + [t + "_ratio" for t in TARGETS[1:]])
        for r in table:
            w.writerow([r["row"], r["label"]] + [r[t] for t in TARGETS]
                       + [r[t + "_ratio"] for t in TARGETS[1:]])
        w.writerow(["peakrss", "peak RSS (MiB)", ""] + [rss[t] for t in TARGETS[1:]]
                   + ["" for _ in TARGETS[1:]])
    doc = {"note": note, "stamp": stamp, "rows": table, "peak_rss_mib": rss,
           "kmsfs_requests": requests, "block_formats": formats, "names": names,
           "transport": uring, "base": base}
    with open(f"{out}/summary-{stamp}.json", "w") as f:
        json.dump(doc, f, indent=1)
    svg(table, f"{out}/chart-{stamp}.svg", note)
    for ext in ("csv", "json", "svg"):
        name = "chart" if ext == "svg" else "summary"
        src = f"{out}/{name}-{stamp}.{ext}"
        with open(src) as a, open(f"{out}/latest.{ext}", "w") as b:
            b.write(a.read())
    print(f"\nresults: {out}/summary-{stamp}.{{csv,json}}, {out}/chart-{stamp}.svg (and latest.*)")


def pair(vals, med, fmt, base, other, title, col_base, col_other):
    """A same-rounds comparison of two kmsfs targets: kmsfs (the default) against
    BASE. Speed default/BASE: > 1 means the default is faster. None when BASE
    was not measured."""
    if not any(t == base for t, _ in vals) or not any(t == other for t, _ in vals):
        return None
    print(f"\n== {title}, same rounds")
    print(f"speed {col_other}/{col_base}: > 1 means {col_other} is faster; every round's value shown\n")
    print(f"| workload | {col_base} | {col_other} | speed | {col_base}, all | {col_other}, all |")
    print("|---|---:|---:|---:|---|---|")
    rows = []
    for key, label, higher in ROWS:
        v1, v2 = med.get((base, key)), med.get((other, key))
        speed = None
        if v1 and v2:
            speed = v2 / v1 if higher else v1 / v2
        a1 = " ".join(vals.get((base, key), []))
        a2 = " ".join(vals.get((other, key), []))
        print(f"| {label} | {fmt(v1)} | {fmt(v2)} | {fmt(speed)} | {a1} | {a2} |")
        rows.append({"row": key, base: v1, other: v2, "speed": speed})
    return rows


def svg(table, path, note):
    """Bars of speed relative to plain (1.0 = plain): for time rows plain/time."""
    colors = {"kmsfs": "#2a7ab9", "kmsfs-nowb": "#8fb8de", "gocryptfs": "#d9822b"}
    w, rowh, left, scale = 900, 62, 330, 230
    h = 70 + rowh * len(table) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">speed relative to a plain directory '
           '(1.0 = plain; higher is better)</text>',
           f'<text x="10" y="38" fill="#555">{note}</text>']
    top = 55
    for k, (t, c) in enumerate(colors.items()):
        out.append(f'<rect x="{left + 150 * k}" y="{top - 12}" width="10" height="10" fill="{c}"/>'
                   f'<text x="{left + 150 * k + 14}" y="{top - 3}">{t}</text>')
    for x in (0.5, 1.0, 1.5, 2.0):
        px = left + x * scale
        out.append(f'<line x1="{px}" y1="{top}" x2="{px}" y2="{h - 25}" stroke="#ccc"/>'
                   f'<text x="{px - 8}" y="{h - 10}" fill="#555">{x}</text>')
    for i, r in enumerate(table):
        y = top + 8 + i * rowh
        out.append(f'<text x="10" y="{y + 18}">{r["label"]}</text>')
        for k, t in enumerate(colors):
            ratio = r[t + "_ratio"]
            if ratio is None:
                continue
            speed = ratio if r["higher_is_better"] else (1 / ratio if ratio else 0)
            bw = min(speed, 2.5) * scale
            out.append(f'<rect x="{left}" y="{y + k * 16}" width="{bw:.1f}" height="14" '
                       f'fill="{colors[t]}"/><text x="{left + bw + 4:.1f}" y="{y + k * 16 + 11}">'
                       f'{speed:.2f}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
