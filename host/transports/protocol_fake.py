"""`fake://` — pyserial port backed by an in-process FakeDevice.

Options as a query string: `fake://?board=NAME&arena=BYTES&nv=NAME`. Every open
is a fresh boot of a fake device; ports opened with the same `nv` name share its
non-volatile storage (the stored model and checkpoints), so reopening one models
a reset of the same device. Without `nv` each device has storage of its own.
"""

from __future__ import annotations

import time
import urllib.parse

from serial import PortNotOpenError, SerialBase, SerialException

from ..fakedevice import FakeDevice, FakeNv

#: non-volatile storage of the fake devices, by their `nv` name (lives as long as the process)
_NV: dict[str, FakeNv] = {}


class Serial(SerialBase):
    def open(self) -> None:
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self._port).query)
        self.device = FakeDevice(board=q.get("board", ["fake"])[0],
                                 arena_bytes=int(q.get("arena", [1 << 20])[0]),
                                 nv=_NV.setdefault(q["nv"][0], FakeNv()) if "nv" in q else None)
        self._rx = bytearray()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _reconfigure_port(self) -> None:
        pass

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    def _pull(self) -> None:
        self.device.tick()
        self._rx += self.device.take_output()

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        deadline = time.monotonic() + (self._timeout or 0)
        while True:
            self._pull()
            if self._rx or time.monotonic() >= deadline:
                data = bytes(self._rx[:size])
                del self._rx[:size]
                return data
            time.sleep(0.001)

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self.device.receive(bytes(data))
        return len(data)

    def reset_input_buffer(self) -> None:
        self._pull()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass
