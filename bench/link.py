#!/usr/bin/env python3
"""A home uplink between two network namespaces, emulated packet by packet (python3 stdlib).

  link.py SRC_NS DST_NS --rate 20mbit --delay 15ms --loss 0.1 [--queue 100ms]

Creates a TUN device in each namespace (rmlinkA in SRC_NS with 10.78.0.1, rmlinkB in
DST_NS with 10.78.0.2, point to point) and forwards every IP packet between them the way a
real link would treat it: serialised at --rate (a packet waits for the ones before it), then
--delay of propagation each way (so the round trip is twice that), with --loss percent of
packets dropped at random and a drop-tail queue of --queue worth of bytes. The kernel's TCP on
both sides sees a real 20 Mbit/s, 30 ms, lossy path. (The sch_netem qdisc would do the same in
the kernel; this machine's kernel does not have it.)

Prints "ready" once both devices are up; runs until killed; prints per-direction counts at exit.
"""

import argparse
import asyncio
import fcntl
import heapq
import os
import random
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def parse_rate(text):
    text = text.lower()
    for unit, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * mult
    return float(text)


def parse_ms(text):
    return float(text.removesuffix("ms")) / 1000.0


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def sh(*args):
    subprocess.run(args, check=True)


class Direction:
    """One direction of the link: a serialiser, a propagation delay, random loss."""

    def __init__(self, name, out_fd, rate, delay, loss, queue):
        self.name, self.out_fd = name, out_fd
        self.rate, self.delay, self.loss, self.queue = rate, delay, loss, queue
        self.free_at = 0.0  # when the serialiser is free
        self.sent = self.dropped = self.queued_drops = self.bytes = 0

    def admit(self, packet, now, timers):
        if random.random() < self.loss:
            self.dropped += 1
            return
        start = max(now, self.free_at)
        if start - now > self.queue:
            self.queued_drops += 1
            return
        self.free_at = start + len(packet) * 8 / self.rate
        heapq.heappush(timers, (self.free_at + self.delay, id(packet), self, packet))

    def deliver(self, packet):
        try:
            os.write(self.out_fd, packet)
            self.sent += 1
            self.bytes += len(packet)
        except BlockingIOError:
            self.queued_drops += 1


async def run(args):
    rate, delay, loss, queue = parse_rate(args.rate), parse_ms(args.delay), args.loss / 100, parse_ms(args.queue)
    a, b = tun("rmlinkA"), tun("rmlinkB")
    for dev, ns, me, peer in (("rmlinkA", args.src_ns, "10.78.0.1", "10.78.0.2"), ("rmlinkB", args.dst_ns, "10.78.0.2", "10.78.0.1")):
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", me, "peer", peer, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    up = Direction("up", b, rate, delay, loss, queue)  # source -> target
    down = Direction("down", a, rate, delay, loss, queue)
    timers = []
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def reader(fd, direction):
        def on_readable():
            now = time.monotonic()
            while True:
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                direction.admit(packet, now, timers)
            wake.set()
        return on_readable

    loop.add_reader(a, reader(a, up))
    loop.add_reader(b, reader(b, down))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, direction, packet = heapq.heappop(timers)
            direction.deliver(packet)
        timeout = (timers[0][0] - now) if timers else 0.05
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), timeout=max(timeout, 0))
        except asyncio.TimeoutError:
            pass
    for d in (up, down):
        print(f"{d.name}: {d.sent} packets ({d.bytes} bytes) delivered, {d.dropped} lost at random, {d.queued_drops} dropped by the full queue", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src_ns")
    p.add_argument("dst_ns")
    p.add_argument("--rate", default="20mbit")
    p.add_argument("--delay", default="15ms")
    p.add_argument("--loss", type=float, default=0.1, help="percent")
    p.add_argument("--queue", default="100ms")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
