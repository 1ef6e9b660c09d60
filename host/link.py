"""The serial link: one request at a time, matched responses, timeouts, retries.

`Link.open(url)` takes anything pyserial's `serial_for_url` takes — `/dev/ttyACM0`,
`socket://127.0.0.1:4321` for an emulated board, `fake://` for the in-process
fake device (host/transports) — and speaks docs/protocol.md over it.
"""

from __future__ import annotations

import random
import time

import serial

from .errors import DeviceError, LinkError, ProtocolError
from .ids import MsgType, Status
from .protocol import Frame, FrameReader, status_name

# pyserial looks up `<scheme>://` handlers as `protocol_<scheme>` modules here.
if "host.transports" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("host.transports")

DEFAULT_BAUD = 921_600


class Link:
    def __init__(self, port: serial.SerialBase, timeout: float = 5.0, retries: int = 2, url: str | None = None):
        self.port = port
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.reader = FrameReader()
        # A random first request id: the device answers a repeat of its last (type, id) from
        # its cache, so a new link (after a reconnect) must not reuse the ids of the old one.
        self._next_id = random.randrange(1, 0x10000)
        #: frames received that answered nothing we asked (boot HELLO, late replies)
        self.unsolicited: list[Frame] = []
        #: bytes this link wrote to / read from the port since it opened (retries and noise included)
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def open(cls, url: str, timeout: float = 5.0, retries: int = 2) -> "Link":
        try:
            port = serial.serial_for_url(url, baudrate=DEFAULT_BAUD, timeout=0.05, do_not_open=True)
            # pyserial's socket:// open() drains whatever already arrived: that would
            # throw away the boot HELLO a device sends the moment we connect.
            port.reset_input_buffer = lambda: None
            if isinstance(port, serial.Serial):
                port.exclusive = True  # a second program on the same port would steal bytes
            try:
                port.open()
            finally:
                del port.reset_input_buffer
        except (serial.SerialException, OSError, ValueError) as e:
            if "exclusively lock" in str(e):
                raise LinkError(f"{url} is busy: another program has it open ({e})",
                                hint="close the other program (a serial monitor, another `host` command) "
                                     "and try again") from e
            raise LinkError(f"cannot open {url}: {e}") from e
        return cls(port, timeout, retries, url)

    def close(self) -> None:
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id = rid % 0xFFFF + 1  # 1..65535, never 0 (the boot HELLO's id)
        return rid

    def send_raw(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"serial link lost while writing: {e}") from e
        self.bytes_sent += len(data)

    def await_boot_hello(self, timeout: float = 10.0) -> bool:
        """Wait for the boot HELLO (request id 0) a device sends once its UART is up; False
        if none arrives within `timeout` s. Bytes sent before that may be lost (QEMU's STM32
        USART drops them until its receiver is enabled, as hardware would), and a lost
        request is only answered when it is retried, a whole timeout later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(f.req_id == 0 for f in self.read_frames(0.2)):
                return True
        return False

    def read_frames(self, wait: float) -> list[Frame]:
        """Frames that arrive within `wait` seconds (returns early on the first batch)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                chunk = self.port.read(max(1, self.port.in_waiting))
            except (serial.SerialException, OSError) as e:
                raise LinkError(f"serial link lost while reading: {e}") from e
            if chunk:
                self.bytes_received += len(chunk)
                frames = self.reader.feed(chunk)
                if frames:
                    return frames
            if time.monotonic() > deadline:
                return []

    def request(self, mtype: MsgType, payload: bytes = b"", timeout: float | None = None) -> Frame:
        """Send a request and return its OK response; raise DeviceError on an error status.

        A lost request or response is retried with the same req_id: the device
        answers a repeat from its cache, so nothing is applied twice.
        """
        timeout = self.timeout if timeout is None else timeout
        frame = Frame(type=int(mtype), req_id=self._new_id(), payload=payload)
        wire = frame.pack()
        for attempt in range(self.retries + 1):
            self.send_raw(wire)
            resp = self._await(frame, timeout)
            if resp is None:
                continue
            if resp.request_type == MsgType.ERROR:
                # our request arrived damaged (bad CRC, truncated): send it again
                continue
            if resp.status != Status.OK:
                msg = resp.payload.decode("utf-8", "replace")
                raise DeviceError(f"device refused {_type_name(mtype)}: {status_name(resp.status)}: {msg}",
                                  status=resp.status)
            return resp
        raise LinkError(f"no answer to {_type_name(mtype)} after {self.retries + 1} tries of {timeout:.1f}s")

    def _await(self, req: Frame, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for f in self.read_frames(min(left, 0.5)):
                if f.req_id == req.req_id and f.request_type in (req.type, MsgType.ERROR):
                    return f
                if f.req_id == req.req_id and f.is_response:
                    raise ProtocolError(f"answer to {_type_name(req.type)} has type 0x{f.type:02x}")
                self.unsolicited.append(f)
        return None


def _type_name(mtype: int) -> str:
    try:
        return MsgType(mtype).name
    except ValueError:
        return f"type 0x{mtype:02x}"
