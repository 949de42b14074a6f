#!/usr/bin/env python3
"""The scale benchmark: a long tick history of many small files, side by side with rsync.

  bench/scale.py [--files N] [--keep]

Generates N files (default 300,000) of 512 bytes in a tree like a platform's history,
db/tick/INSTRUMENT/YYYYMM/DD.Last.ncd, then on loopback, in one run, times:

  S1   the initial mirror: rsync to an rsync daemon, rsync --fsync (the same durability as
       RainMaker: every file synced before its rename), and `rainmaker push --once` to a
       `rainmaker serve`;
  S3   nothing changed: rsync, rainmaker;
  one  one file changed by 2 bytes: rsync, rainmaker;

and the peak RSS of every process (GNU time's "Maximum resident set size"): each rsync and
rainmaker client, the rsync daemon (with the children it forked per session), and the
receiving agent (its peak over the whole run, and what it holds at the end, idle). Every
target is compared with the source (paths, sizes, contents of a sample) after every step.

Needs python3, rsync, GNU time (/usr/bin/time), and a rainmaker binary (RAINMAKER_BIN, or
the release build under CARGO_TARGET_DIR, built if missing). Prints a markdown table and writes
it to bench/last-scale.md.
"""

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, log):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"a server exited:\n{Path(log).read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def generate(root, files):
    """`files` files of 512 bytes: instruments x months x days."""
    rng = random.Random(7)
    days = 28
    months = 12
    instruments = max(1, -(-files // (days * months)))
    n = 0
    for i in range(instruments):
        for m in range(months):
            folder = root / "db" / "tick" / f"INST{i:04d}" / f"2026{m + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for d in range(days):
                if n >= files:
                    return n
                (folder / f"{d + 1:02d}.Last.ncd").write_bytes(rng.randbytes(512))
                n += 1
    return n


def max_rss_mib(time_log):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", Path(time_log).read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def timed(name, argv, logs):
    """Runs argv under GNU time; returns (seconds, peak RSS MiB)."""
    time_log = logs / f"{name}.time"
    out = logs / f"{name}.out"
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    with open(out, "wb") as o:
        r = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_log), *argv], stdout=o, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"{name} failed ({r.returncode}):\n{out.read_text()[-3000:]}")
    return seconds, max_rss_mib(time_log)


def listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d != ".rainmaker"]
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.stat().st_size
    return out


def verify(name, src, dst, sample):
    a, b = listing(src), listing(dst)
    if a != b:
        missing = len(set(a) - set(b))
        extra = len(set(b) - set(a))
        sys.exit(f"{name}: the target differs from the source ({missing} missing, {extra} extra)")
    for rel in sample:
        if (src / rel).read_bytes() != (dst / rel).read_bytes():
            sys.exit(f"{name}: {rel} differs")


def rainmaker_binary():
    given = os.environ.get("RAINMAKER_BIN")
    if given:
        return given
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/rainmaker-target"))
    binary = target / "release" / "rainmaker"
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "rainmaker"], cwd=REPO, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    return str(binary)


def build_name(binary):
    """The checkout's commit, or the binary RAINMAKER_BIN named (which may be another build)."""
    if os.environ.get("RAINMAKER_BIN"):
        return f"`{binary}` (RAINMAKER_BIN)"
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return rev.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300_000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    rm = rainmaker_binary()
    work = BENCH / "work" / f"scale-{os.getpid()}"
    logs = work / "logs"
    logs.mkdir(parents=True)
    src = work / "src"
    procs = []
    try:
        t0 = time.monotonic()
        made = generate(src, args.files)
        print(f"generated {made} files in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        subprocess.run(f"find '{src}' -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
        files = sorted(listing(src))
        sample = random.Random(1).sample(files, min(200, len(files)))

        # The rsync daemon: two modules, plain and --fsync (a fresh target each).
        dst_rsync, dst_fsync, dst_rm = work / "dst-rsync", work / "dst-fsync", work / "dst-rm"
        for d in (dst_rsync, dst_fsync, dst_rm):
            d.mkdir()
        rsync_port = free_port()
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"use chroot = no\nlog file = {logs}/rsyncd.log\n"
            f"[plain]\n    path = {dst_rsync}\n    read only = no\n    uid = {os.getuid()}\n    gid = {os.getgid()}\n"
            f"[fsync]\n    path = {dst_fsync}\n    read only = no\n    uid = {os.getuid()}\n    gid = {os.getgid()}\n")
        daemon_time = logs / "rsyncd.time"
        daemon = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(daemon_time), "rsync", "--daemon", "--no-detach",
                                   f"--config={conf}", f"--port={rsync_port}", "--address=127.0.0.1"],
                                  stderr=open(logs / "rsyncd.err", "wb"))
        procs.append(daemon)
        wait_port(rsync_port, daemon, logs / "rsyncd.err")

        token = work / "token"
        token.write_text(os.urandom(16).hex())
        os.chmod(token, 0o600)
        rm_port = free_port()
        serve_log = logs / "serve.err"
        serve_time = logs / "serve.time"
        serve = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(serve_time), rm, "serve", "--root", str(dst_rm),
                                  "--listen", f"127.0.0.1:{rm_port}", "--token-file", str(token)],
                                 stderr=open(serve_log, "wb"), env={**os.environ, "RAINMAKER_DATA_DIR": str(work / "data")})
        procs.append(serve)
        wait_port(rm_port, serve, serve_log)
        for _ in range(100):
            fp = re.search(r"certificate fingerprint (SHA256:[0-9a-f]+)", serve_log.read_text())
            if fp:
                break
            time.sleep(0.05)
        fp = fp.group(1)
        serve_pid = int(subprocess.run(["pgrep", "-P", str(serve.pid)], capture_output=True, text=True).stdout.split()[0])

        def rsync(name, module, extra=()):
            return timed(name, ["rsync", "-a", "--delete", *extra, f"{src}/", f"rsync://127.0.0.1:{rsync_port}/{module}/"], logs)

        def push(name):
            return timed(name, [rm, "push", str(src), "--to", f"wss://127.0.0.1:{rm_port}", "--fingerprint", fp,
                                "--token-file", str(token), "--once", "--json", "--state-dir", str(work / "state")], logs)

        rows = []
        s = rsync("s1-rsync", "plain")
        verify("s1-rsync", src, dst_rsync, sample)
        f = rsync("s1-rsync-fsync", "fsync", ["--fsync"])
        verify("s1-rsync-fsync", src, dst_fsync, sample)
        r = push("s1-rainmaker")
        verify("s1-rainmaker", src, dst_rm, sample)
        rows.append(("S1 initial", s, f, r))
        s = rsync("s3-rsync", "plain")
        r = push("s3-rainmaker")
        verify("s3-rainmaker", src, dst_rm, sample)
        rows.append(("S3 nothing changed", s, None, r))
        one = src / files[len(files) // 2]
        data = bytearray(one.read_bytes())
        data[100:102] = b"\x00\x01" if data[100:102] != b"\x00\x01" else b"\x02\x03"
        one.write_bytes(bytes(data))
        s = rsync("one-rsync", "plain")
        r = push("one-rainmaker")
        verify("one-rainmaker", src, dst_rm, [str(one.relative_to(src))] + sample)
        rows.append(("one 2-byte change", s, None, r))
        time.sleep(2)
        idle_kib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{serve_pid}/status").read_text()).group(1))
    finally:
        for p in procs:
            if p.poll() is None:
                subprocess.run(["pkill", "-TERM", "-P", str(p.pid)])
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    serve_peak = max_rss_mib(serve_time)
    daemon_peak = max_rss_mib(daemon_time)

    def cell(x):
        return "" if x is None else f"{x[0]:.2f} s, {x[1]:.0f} MiB"

    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- command: `bench/scale.py --files {args.files}`; rainmaker {build_name(rm)}",
        f"- machine: nproc {os.cpu_count()}; loopback; warm page cache; `sync` before each timed command; one run each",
        f"- data: {len(files)} files of 512 bytes in db/tick/INSTRUMENT/YYYYMM/DD.Last.ncd",
        "",
        "| scenario | rsync (time, peak RSS) | rsync --fsync | rainmaker push |",
        "|---|---|---|---|",
    ]
    for name, s, f, r in rows:
        lines.append(f"| {name} | {cell(s)} | {cell(f)} | {cell(r)} |")
    lines += [
        "",
        f"- receiving agent (`rainmaker serve`): peak RSS {serve_peak:.0f} MiB over the run, {idle_kib / 1024:.0f} MiB idle after it",
        f"- rsync daemon (with the children it forked): peak RSS {daemon_peak:.0f} MiB",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (BENCH / "last-scale.md").write_text(report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
