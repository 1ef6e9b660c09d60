# Shared code this port builds with (folder under firmware/port/): startup, SysTick
# cycles, exit and the linker-script template. Read by firmware/Makefile and host/boards.py.
PORT_SHARED := armv7m
