"""The subcommands of `host`, one module each."""

from . import (boards_cmd, compare_cmd, compile_cmd, datasets_cmd, emulate_cmd, firmware_cmd, flash_cmd, info_cmd,
               merge_cmd, plan_cmd, stream_cmd)

ALL = [boards_cmd, compile_cmd, plan_cmd, datasets_cmd, emulate_cmd, firmware_cmd, flash_cmd, stream_cmd,
       compare_cmd, info_cmd, merge_cmd]
