#!/usr/bin/env python3
"""Test-data generator for the RainMaker benchmark (python3 stdlib only).

  gen.py init DIR [--seed N] [--scale X]   build a trading-platform-like data folder
  gen.py session DIR [--seed N]            simulate one trading session on DIR
  gen.py tick FILE SIZE [--seed N]         write one live tick file of SIZE bytes (S4)

`init` writes about 1 GiB x scale (scale defaults to env BENCH_SCALE, else 1.0):
  * 40 binary tick files, db/tick/<INSTRUMENT MM-YY>/<yyyymmdd>.Last.ncd, of
    24-byte records <u64 timestamp ns, f64 price, u32 volume, u32 flags>:
    timestamps increase by random small deltas, prices are a random walk on
    the instrument's tick grid;
  * 2,000 small settings/workspace/source files (200 B - 8 KiB, XML, C#, text)
    in nested folders (this count does not scale);
  * a few empty folders.
All content and mtimes (fixed dates in the past) follow from the seed.
It prints the total size of the files in bytes on stdout.

`session` appends 0.5% of new records to every tick file (continuing the walk),
edits 5 settings files in place, adds 5 and deletes 5. Its seed defaults to
one derived from the folder's current state, so successive sessions differ
but are reproducible. It prints the bytes changed (appended + size of edited
and added files) on stdout.

`tick` writes one tick file of SIZE bytes (rounded down to whole records; K, M,
G suffixes are powers of 1024, e.g. 200M) for the instrument its folder names
(ES when the folder is not an instrument folder), e.g. today's live file
db/tick/ES 12-26/20261123.Last.ncd for the continuous-mode scenario S4 (see
bench/s4.sh). bench/s4_probe.py appends to it with `continue_records`.

Speed: records are not packed one at a time. Per instrument a pool of ~2 MiB
of real records is packed once; each output chunk of 5,461 records (~128 KiB)
is a slice of the pool shifted in one big-integer addition so that its
timestamps continue after the previous chunk and its prices continue the walk
from the previous price. Since the shift is exact on the float bit pattern
(the tick is a power of two and prices stay within one binary exponent),
prices stay exactly on the grid. Every chunk has fresh timestamps, so no two
128 KiB blocks are equal.
"""

import argparse
import math
import os
import random
import struct
import sys
import zlib

REC = struct.Struct("<QdII")
REC_SIZE = REC.size  # 24
CHUNK_RECORDS = 5461  # 131,064 bytes, just under 128 KiB
POOL_RECORDS = 90_000  # ~2.1 MiB per instrument
CANDIDATES = 512  # slice starts to choose from
GIB = 1 << 30

# name, tick (a power of two), base price; each stays within [2^e, 2^(e+1)).
INSTRUMENTS = [
    ("ES", 0.25, 6012.25),
    ("NQ", 0.25, 21040.5),
    ("YM", 1.0, 44120.0),
    ("MES", 0.25, 6011.75),
    ("MNQ", 0.25, 21039.25),
    ("MYM", 1.0, 44118.0),
    ("ZN", 1 / 64, 110.5),
    ("ZF", 1 / 128, 108.25),
]
CONTRACT = "12-26"
DAYS = [(2026, 11, d) for d in (16, 17, 18, 19, 20)]
DAY_MTIME_BASE = 1794787200  # 2026-11-16 00:00:00 UTC
SMALL_FILES = 2000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def default_scale():
    try:
        return float(os.environ.get("BENCH_SCALE", "1.0"))
    except ValueError:
        sys.exit("BENCH_SCALE must be a number")


# ---------------------------------------------------------------- tick data


class Instrument:
    """Record pool and float-bit arithmetic for one instrument."""

    def __init__(self, name, tick, base, rng):
        self.name, self.tick = name, tick
        exp = math.frexp(base)[1] - 1  # base in [2^exp, 2^(exp+1))
        self.lo = math.ceil(2.0**exp / tick)  # tick range sharing one exponent
        self.hi = int(2.0 ** (exp + 1) / tick) - 1
        self.ulps_per_tick = int(tick / 2.0 ** (exp - 52))
        self.base = round(base / tick)
        margin = min(self.base - self.lo, self.hi - self.base)
        self.revert = max(20, margin // 4)  # pull back towards base beyond this
        self._build_pool(rng)

    def _build_pool(self, rng):
        n = POOL_RECORDS
        ts, px = [0] * n, [0] * n
        t, p, band = 0, self.base, self.revert // 2
        rnd, expo = rng.random, rng.expovariate
        for i in range(1, n):
            t += 1 + int(expo(1 / 40e6))  # ~40 ms between trades
            r = rnd()
            step = 0 if r < 0.7 else (1 if r < 0.85 else -1)
            if abs(p + step - self.base) > band:
                step = -step
            p += step
            ts[i], px[i] = t, p
        vols = [1 if rnd() < 0.55 else int(expo(1 / 6)) + 1 for _ in range(n)]
        flags = [(1 if rnd() < 0.5 else 2) | (4 if rnd() < 0.03 else 0) for _ in range(n)]
        tick = self.tick
        fields = []
        for i in range(n):
            fields += (ts[i], px[i] * tick, vols[i], flags[i])
        self.pool = struct.pack("<" + "QdII" * n, *fields)
        self.ts, self.px = ts, px
        # candidate slice starts (>= 1 so there is a predecessor record)
        k = CHUNK_RECORDS
        self.cands = []
        for s in sorted(rng.sample(range(1, n - k), CANDIDATES)):
            window = px[s : s + k]
            self.cands.append((s, min(window), max(window), px[s + k - 1] - px[s - 1]))

    def chunk(self, s, k, cur_ts, cur_px):
        """Pool records [s, s+k) shifted to follow (cur_ts, cur_px)."""
        d_ts = cur_ts - self.ts[s - 1]
        d_px = cur_px - self.px[s - 1]
        raw = int.from_bytes(self.pool[s * REC_SIZE : (s + k) * REC_SIZE], "little")
        raw += d_ts * unit(k, 0) + d_px * self.ulps_per_tick * unit(k, 8)
        return raw.to_bytes(k * REC_SIZE, "little"), self.ts[s + k - 1] + d_ts, self.px[s + k - 1] + d_px

    def records(self, rng, nrec, cur_ts, cur_px):
        """Yield byte chunks totalling nrec records that follow (cur_ts, cur_px)."""
        while nrec > 0:
            k = min(nrec, CHUNK_RECORDS)
            s = self._pick(rng, k, cur_px)
            data, cur_ts, cur_px = self.chunk(s, k, cur_ts, cur_px)
            yield data
            nrec -= k

    def _pick(self, rng, k, cur_px):
        want = 0
        if cur_px > self.base + self.revert:
            want = -1
        elif cur_px < self.base - self.revert:
            want = 1
        order = list(range(len(self.cands)))
        rng.shuffle(order)
        fallback = None
        for i in order:
            s, mn, mx, net = self.cands[i]
            if k != CHUNK_RECORDS:  # short tail chunk: recompute its bounds
                w = self.px[s : s + k]
                mn, mx, net = min(w), max(w), w[-1] - self.px[s - 1]
            d = cur_px - self.px[s - 1]
            if mn + d < self.lo or mx + d > self.hi:
                continue
            if want == 0 or net * want >= 0:
                return s
            fallback = fallback or s
        if fallback is None:
            raise RuntimeError(f"{self.name}: price walk left its exponent range")
        return fallback


_units = {}


def unit(k, offset):
    """Integer with a 1 at byte `offset` of each of k records (little endian)."""
    key = (k, offset)
    if key not in _units:
        rec = bytearray(REC_SIZE)
        rec[offset] = 1
        _units[key] = int.from_bytes(bytes(rec) * k, "little")
    return _units[key]


def instrument_for(folder):
    name = folder.split(" ")[0]
    for spec in INSTRUMENTS:
        if spec[0] == name:
            return spec
    raise SystemExit(f"unknown instrument folder {folder!r}")


def gen_ticks(root, rng, scale):
    files = [(spec, day) for spec in INSTRUMENTS for day in DAYS]
    weights = [rng.uniform(0.5, 1.5) * (1.6 if spec[0] in ("ES", "NQ") else 1.0) for spec, _ in files]
    budget = GIB * scale
    pools = {spec[0]: Instrument(*spec, random.Random(rng.getrandbits(64))) for spec in INSTRUMENTS}
    total = 0
    for (spec, day), w in zip(files, weights):
        inst = pools[spec[0]]
        nrec = max(1, int(budget * w / sum(weights)) // REC_SIZE)
        folder = os.path.join(root, "db", "tick", f"{spec[0]} {CONTRACT}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "%04d%02d%02d.Last.ncd" % day)
        day_start = (DAY_MTIME_BASE + (day[2] - DAYS[0][2]) * 86400) * 10**9
        with open(path, "wb", buffering=1 << 20) as f:
            for data in inst.records(rng, nrec, day_start, inst.base):
                f.write(data)
        mtime = day_start + 23 * 3600 * 10**9 + rng.randrange(10**12)
        os.utime(path, ns=(mtime, mtime))
        total += nrec * REC_SIZE
    return total


def append_ticks(root, rng):
    total = 0
    tick_root = os.path.join(root, "db", "tick")
    for folder in sorted(os.listdir(tick_root)):
        spec = instrument_for(folder)
        inst = None
        for name in sorted(os.listdir(os.path.join(tick_root, folder))):
            if not name.endswith(".ncd"):
                continue
            path = os.path.join(tick_root, folder, name)
            size = os.path.getsize(path)
            if size < REC_SIZE:
                continue
            inst = inst or Instrument(*spec, random.Random(rng.getrandbits(64)))
            with open(path, "rb") as f:
                f.seek(size - size % REC_SIZE - REC_SIZE)
                ts, price, _, _ = REC.unpack(f.read(REC_SIZE))
            nrec = max(1, size * 5 // 1000 // REC_SIZE)
            with open(path, "ab") as f:
                for data in inst.records(rng, nrec, ts, round(price / inst.tick)):
                    f.write(data)
            total += nrec * REC_SIZE
    return total


def live_instrument(path, seed):
    """The Instrument for a tick file at `path`, from its folder's name (ES if none)."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    spec = next((spec for spec in INSTRUMENTS if spec[0] == folder.split(" ")[0]), INSTRUMENTS[0])
    return Instrument(*spec, random.Random(seed))


def continue_records(path, nrec, seed=7):
    """nrec records (bytes) that continue the tick file at `path`: later timestamps, the same walk."""
    inst = live_instrument(path, seed)
    size = os.path.getsize(path)
    if size < REC_SIZE:
        ts, px = DAY_MTIME_BASE * 10**9, inst.base
    else:
        with open(path, "rb") as f:
            f.seek(size - size % REC_SIZE - REC_SIZE)
            ts, price, _, _ = REC.unpack(f.read(REC_SIZE))
        px = round(price / inst.tick)
    return b"".join(inst.records(random.Random(seed + 1), nrec, ts, px))


# ------------------------------------------------------------ small files

WORDS = (
    "Chart Instrument Bars Period Minute Tick Range Renko Volume Indicator Strategy "
    "Template Workspace Window Panel Plot Brush Stroke Color Series Account Sim101 "
    "Order Entry Quantity Stop Target Trailing ATM Session Hours Exchange Default "
    "Font Arial Size Scale Right Left Visible Enabled Calculate OnBarClose OnPriceChange "
    "Period Fast Slow Signal Smooth Upper Lower Middle Band Offset Opacity DashStyle "
    "Solid Dot Width Label DisplayName MaximumBarsLookBack Infinite Input Price Close "
    "High Low Open Typical Weighted Median Anchor Zoom Cursor Crosshair Global Link"
).split()
SMALL_DIRS = [
    ("workspaces", ".xml", "xml"),
    ("workspaces/_Backup", ".xml", "xml"),
    ("templates/Chart", ".xml", "xml"),
    ("templates/Indicator/Bollinger", ".xml", "xml"),
    ("templates/Indicator/MACD", ".xml", "xml"),
    ("templates/Indicator/VWAP", ".xml", "xml"),
    ("templates/DrawingTool/Line", ".xml", "xml"),
    ("templates/DrawingTool/Fibonacci", ".xml", "xml"),
    ("templates/AtmStrategy", ".xml", "xml"),
    ("templates/SuperDom", ".xml", "xml"),
    ("bin/Custom/Indicators", ".cs", "cs"),
    ("bin/Custom/Indicators/Community", ".cs", "cs"),
    ("bin/Custom/Strategies", ".cs", "cs"),
    ("bin/Custom/AddOns", ".cs", "cs"),
    ("bin/Custom/BarsTypes", ".cs", "cs"),
    ("bin/Custom/DrawingTools", ".cs", "cs"),
    ("trace", ".txt", "txt"),
    ("log", ".txt", "txt"),
    ("strategyanalyzerlogs", ".txt", "txt"),
    ("db/cache/Instruments", ".xml", "xml"),
]
EMPTY_DIRS = ["db/day", "db/minute", "db/replay", "outgoing", "tmp", "templates/MarketAnalyzer"]


def text_blob(rng, kind, size):
    w = rng.choice
    out, n = [], 0
    if kind == "xml":
        out.append('<?xml version="1.0" encoding="utf-8"?>\n<NinjaTrader>\n')
    elif kind == "cs":
        out.append("#region Using declarations\nusing System;\nusing NinjaTrader.Cbi;\n#endregion\n\n")
    n = sum(map(len, out))
    depth = 1
    while n < size:
        if kind == "xml":
            tag = w(WORDS) + w(WORDS)
            line = "%s<%s %s=\"%s\" %s=\"%d\">%s</%s>\n" % (
                "  " * depth, tag, w(WORDS), w(WORDS), w(WORDS), rng.randrange(100000),
                "%.4f" % rng.uniform(-5000, 5000), tag)
            depth = max(1, min(6, depth + rng.choice((-1, 0, 0, 1))))
        elif kind == "cs":
            line = "        %s %s%s = %s(%d, %.2f); // %s %s\n" % (
                w(("double", "int", "bool", "Series<double>", "Brush")), w(WORDS).lower(),
                w(WORDS), w(WORDS), rng.randrange(1000), rng.uniform(0, 100), w(WORDS), w(WORDS))
        else:
            line = "2026-11-%02d %02d:%02d:%02d:%03d %s %s %s %d\n" % (
                rng.randrange(1, 29), rng.randrange(24), rng.randrange(60), rng.randrange(60),
                rng.randrange(1000), w(WORDS), w(WORDS), w(WORDS), rng.randrange(10**6))
        out.append(line)
        n += len(line)
    if kind == "xml":
        out.append("</NinjaTrader>\n")
    return "".join(out).encode()[:max(size, 1)]


def small_size(rng):
    return int(math.exp(rng.uniform(math.log(200), math.log(8192))))


def write_small(root, rng, rel, kind, size, mtime_ns=None):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text_blob(rng, kind, size)
    with open(path, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return len(data)


def gen_small(root, rng):
    total = 0
    for i in range(SMALL_FILES):
        folder, ext, kind = SMALL_DIRS[i % len(SMALL_DIRS)] if i < len(SMALL_DIRS) else rng.choice(SMALL_DIRS)
        rel = "%s/%s%s%d%s" % (folder, rng.choice(WORDS), rng.choice(WORDS), i, ext)
        mtime = (DAY_MTIME_BASE - rng.randrange(365 * 86400)) * 10**9 + rng.randrange(10**9)
        total += write_small(root, rng, rel, kind, small_size(rng), mtime)
    for name, kind in (("config.xml", "xml"), ("Config.xml", "xml"), ("db/NinjaTrader.sqlite.txt", "txt")):
        total += write_small(root, rng, name, kind, 4096, DAY_MTIME_BASE * 10**9)
    for d in EMPTY_DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    return total


def list_small(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if d != ".rainmaker" and (rel_dir, d) != ("db", "tick"))
        for name in sorted(filenames):
            if name.endswith((".xml", ".cs", ".txt")):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def edit_small(root, rng, rel):
    path = os.path.join(root, rel)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # change a few characters in place and add a line, as an application saving its settings would
    for _ in range(8):
        if data:
            i = rng.randrange(len(data))
            if chr(data[i]).isdigit():
                data[i] = ord(str(rng.randrange(10)))
    data += b"<!-- saved %d -->\n" % rng.randrange(10**9) if rel.endswith(".xml") else b"// saved %d\n" % rng.randrange(10**9)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    return len(data)


# --------------------------------------------------------------- commands


def tree_size(root):
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".rainmaker"]
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames)
    return total


def cmd_init(args):
    root = args.dir
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"{root} exists and is not empty")
    os.makedirs(root, exist_ok=True)
    rng = random.Random(args.seed)
    ticks = gen_ticks(root, rng, args.scale)
    small = gen_small(root, random.Random(args.seed + 1))
    log(f"gen.py init: {ticks:,} bytes of tick data in 40 files, {small:,} bytes in {SMALL_FILES + 3} small files")
    print(ticks + small)


def cmd_session(args):
    root = args.dir
    if not os.path.isdir(os.path.join(root, "db", "tick")):
        sys.exit(f"{root} was not made by gen.py init")
    seed = args.seed
    if seed is None:  # derived from the folder's state: each session differs, reproducibly
        small = list_small(root)
        seed = zlib.crc32(("%d|%s" % (tree_size(os.path.join(root, "db", "tick")), "|".join(small))).encode())
    rng = random.Random(seed)
    appended = append_ticks(root, rng)
    small = list_small(root)
    picked = rng.sample(small, 10)
    edited = sum(edit_small(root, rng, rel) for rel in picked[:5])
    for rel in picked[5:]:
        os.remove(os.path.join(root, rel))
    added = 0
    for i in range(5):
        folder, ext, kind = rng.choice(SMALL_DIRS[:10])
        rel = "%s/Session%d_%d%s" % (folder, seed % 100000, i, ext)
        added += write_small(root, rng, rel, kind, small_size(rng))
    log(f"gen.py session (seed {seed}): appended {appended:,} bytes to tick files, "
        f"edited 5 files ({edited:,} bytes), added 5 ({added:,} bytes), deleted 5")
    print(appended + edited + added)


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")


def cmd_tick(args):
    path = args.file
    if os.path.exists(path):
        sys.exit(f"{path} exists")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rng = random.Random(args.seed)
    inst = live_instrument(path, rng.getrandbits(64))
    nrec = args.size // REC_SIZE
    day_start = (DAY_MTIME_BASE + 7 * 86400) * 10**9  # the Monday after the generated week
    with open(path, "wb", buffering=1 << 20) as f:
        for data in inst.records(rng, nrec, day_start, inst.base):
            f.write(data)
    log(f"gen.py tick: {nrec * REC_SIZE:,} bytes ({nrec:,} records of {inst.name}) in {path}")
    print(nrec * REC_SIZE)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("init", help="generate the data folder")
    pi.add_argument("dir")
    pi.add_argument("--seed", type=int, default=42)
    pi.add_argument("--scale", type=float, default=None, help="size factor (default: env BENCH_SCALE or 1.0)")
    ps = sub.add_parser("session", help="simulate one trading session")
    ps.add_argument("dir")
    ps.add_argument("--seed", type=int, default=None)
    pt = sub.add_parser("tick", help="write one live tick file (S4)")
    pt.add_argument("file")
    pt.add_argument("size", type=parse_size, help="bytes, or with a K/M/G suffix (powers of 1024)")
    pt.add_argument("--seed", type=int, default=4)
    args = p.parse_args()
    if args.cmd == "tick":
        cmd_tick(args)
    elif args.cmd == "init":
        if args.scale is None:
            args.scale = default_scale()
        if args.scale <= 0:
            sys.exit("scale must be > 0")
        cmd_init(args)
    else:
        cmd_session(args)


if __name__ == "__main__":
    main()
