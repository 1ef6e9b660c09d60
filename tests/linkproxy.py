"""A TCP proxy that damages a serial link on purpose, for the link fault tests.

    with LinkProxy("socket://127.0.0.1:4321", Faults(drop=0.002, seed=1)) as proxy:
        Link.open(proxy.url)   # talks to the board through the proxy

Each direction (host → device, device → host) is pumped by its own thread, byte
by byte through a seeded random generator: a byte may be dropped, duplicated,
or have one bit flipped, and a chunk may be held back for a few milliseconds
(delay; order is kept, as on a serial line). `cut()`, or `cut_after` once that
many bytes have passed, closes the host's connection (a dropped link: the host must
reconnect, and the proxy then opens a fresh connection to the board, which QEMU
and the native build accept again). `stats` counts what was done.

The faults hit bytes, not frames: damage lands in headers, lengths, payloads
and CRCs alike, which is what a noisy UART does.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Faults:
    drop: float = 0.0        # probability a byte is lost
    duplicate: float = 0.0   # ... sent twice
    corrupt: float = 0.0     # ... has one bit flipped
    delay: float = 0.0       # probability a chunk is held back 1-20 ms
    seed: int = 0
    #: close the host's connection after this many bytes (both directions together); None: never
    cut_after: int | None = None
    #: which directions are damaged: "up" (host → device), "down" (device → host)
    directions: tuple[str, ...] = ("up", "down")


@dataclass
class Stats:
    bytes: int = 0
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    delayed: int = 0
    cuts: int = 0
    connections: int = 0


class LinkProxy:
    def __init__(self, upstream_url: str, faults: Faults):
        host, port = upstream_url.removeprefix("socket://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.faults = faults
        self.stats = Stats()
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._listen.getsockname()[1]}"
        self._stop = threading.Event()
        self._cut_done = False
        self._live: tuple[socket.socket, socket.socket] | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __enter__(self) -> "LinkProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._listen.close()
        self._thread.join(5)

    def cut(self) -> None:
        """Drop the host's connection now (as `cut_after` does at a byte count)."""
        live = self._live
        if live:
            self.stats.cuts += 1
            for s in live:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- plumbing ---------------------------------------------------------------------
    def _serve(self) -> None:
        """One host connection at a time, each with a fresh connection to the board."""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._listen], [], [], 0.1)
                if not r:
                    continue
                client, _ = self._listen.accept()
            except OSError:
                return
            board = socket.create_connection(self.upstream)
            for s in (client, board):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats.connections += 1
            self._live = (client, board)
            closed = threading.Event()
            pumps = [threading.Thread(target=self._pump, args=(client, board, "up", closed), daemon=True),
                     threading.Thread(target=self._pump, args=(board, client, "down", closed), daemon=True)]
            for t in pumps:
                t.start()
            for t in pumps:
                t.join()
            client.close()
            board.close()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, closed: threading.Event) -> None:
        while not closed.is_set() and not self._stop.is_set():
            try:
                r, _, _ = select.select([src], [], [], 0.05)
                if not r:
                    continue
                data = src.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            out, cut = self._damage(data, direction)
            try:
                if out:
                    dst.sendall(out)
            except OSError:
                break
            if cut:
                self.stats.cuts += 1
                break
        closed.set()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _damage(self, data: bytes, direction: str) -> tuple[bytes, bool]:
        f, st = self.faults, self.stats
        with self._lock:
            rng = self._rng
            out = bytearray()
            cut = False
            for b in data:
                st.bytes += 1
                if f.cut_after is not None and not self._cut_done and st.bytes >= f.cut_after:
                    self._cut_done = cut = True
                    break
                if direction in f.directions:
                    x = rng.random()
                    if x < f.drop:
                        st.dropped += 1
                        continue
                    x -= f.drop
                    if x < f.corrupt:
                        st.corrupted += 1
                        b ^= 1 << rng.randrange(8)
                    elif x - f.corrupt < f.duplicate:
                        st.duplicated += 1
                        out.append(b)
                out.append(b)
            hold = direction in f.directions and rng.random() < f.delay
            wait = rng.uniform(0.001, 0.02) if hold else 0.0
        if hold:
            st.delayed += 1
            time.sleep(wait)
        return bytes(out), cut
