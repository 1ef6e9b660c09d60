# EdgeProp — the front door.
#
#   make demo                     set up, build, boot an emulated Cortex-M4F, train on real data
#   make test                     set up, build, run the whole test suite
#   make firmware BOARD=<board>   build firmware (boards/<board>/board.toml)
#   make flash BOARD=<board>      put firmware on the board; with none attached, boot the
#                                 emulated board and print its serial URL
#   make setup                    only install what is missing (apt-get tools, pip venv)
#
# Everything Python runs from the project venv ($(VENV)); `host` is its CLI.

BOARD ?= mps2-an386
VENV ?= .venv
PY := $(VENV)/bin/python
HOST := $(VENV)/bin/host
SYSPY ?= python3
BUILD := $(CURDIR)/build
# boards the test suite runs on
TEST_BOARDS := native mps2-an386
FW_SOURCES := $(shell find firmware -name '*.[chS]' -o -name '*.in' -o -name Makefile)

.PHONY: all setup tools venv firmware flash demo test clean help
.DEFAULT_GOAL := help

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

setup: tools venv

# apt-get what the boards need (cross compilers, QEMU) if it is missing.
tools:
	@$(SYSPY) -m host.toolcheck --install $(sort $(BOARD) $(TEST_BOARDS))

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> project venv $(VENV): installing the host package and its Python deps (pip)"
	@test -x $(PY) || $(SYSPY) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# Board settings and linker script are generated from boards/<board>/board.toml.
$(BUILD)/%/board.mk: boards/%/board.toml host/boards.py firmware/port/*/link.ld.in
	@$(SYSPY) -m host.boards render $* $(BUILD)/$*

firmware: tools $(BUILD)/$(BOARD)/board.mk
	@echo "==> building firmware for $(BOARD)"
	@$(MAKE) --no-print-directory -C firmware BUILD=$(BUILD)/$(BOARD)

flash: firmware venv
	@$(HOST) emulate --board $(BOARD)

demo: setup
	@$(MAKE) --no-print-directory firmware BOARD=mps2-an386
	@echo "==> booting the emulated mps2-an386 (QEMU) and training on scikit-learn digits"
	@$(HOST) stream --emulate --board mps2-an386 --dataset digits --epochs 3

test: setup
	@for b in $(TEST_BOARDS); do $(MAKE) --no-print-directory firmware BOARD=$$b || exit 1; done
	@$(PY) -m host.codegen --check
	@echo "==> frame receiver unit test (C, ASan+UBSan)"
	@$(MAKE) --no-print-directory -C firmware test-frame BUILD=$(BUILD)/native
	@echo "==> running the test suite (pytest)"
	@$(PY) -m pytest -q

clean:
	rm -rf $(BUILD)
