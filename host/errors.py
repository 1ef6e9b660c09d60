"""The host's exception hierarchy. Each class carries the process exit code the
CLI returns for it, so scripts can tell a dead link from a model that does not fit.

    EdgePropError (1)
    ├── UsageError (2)          bad command-line input
    ├── LinkError (3)           no device, dead or timed-out serial link
    ├── DeviceError (4)         the device answered with an error status
    │   └── ProtocolError (4)   the device answered something we cannot parse
    ├── ModelError (5)          model cannot be compiled or does not fit the board
    ├── BoardError (6)          unknown/malformed board description
    └── ToolError (7)           a missing toolchain, emulator or firmware image
"""

from __future__ import annotations


class EdgePropError(Exception):
    exit_code = 1
    #: one-line hint printed under the message: what the user can do about it
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(EdgePropError):
    exit_code = 2


class LinkError(EdgePropError):
    exit_code = 3
    hint = "check that the board is running (`make flash BOARD=...`) and --port is right"


class DeviceError(EdgePropError):
    exit_code = 4

    def __init__(self, message: str, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


class ProtocolError(DeviceError):
    hint = "the device speaks another protocol version or firmware: rebuild and reflash it"


class ModelError(EdgePropError):
    exit_code = 5


class BoardError(EdgePropError):
    exit_code = 6
    hint = "`host boards` lists the boards this checkout knows"


class ToolError(EdgePropError):
    exit_code = 7
    hint = "`make setup` installs the cross toolchains and QEMU"
