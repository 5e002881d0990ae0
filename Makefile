# qwenbench: `make demo` and `make test` work on a fresh clone; each target installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= results
SYNTHETIC ?=
OUT ?=

.PHONY: install demo test lint bench-all clean

# llama-cpp-python compiles llama.cpp for this CPU (-march=native). Its AMX matrix kernels segfault on the first
# prompt on Sapphire Rapids Xeons (ggml-org/llama.cpp#20824, open upstream; reproduced here on Q4_K_M models), so
# x86-64 builds leave them out; AVX-512 and the repacked CPU kernels stay. The wheel is built once per flag set
# into its own folder: pip's own wheel cache ignores CMAKE_ARGS and would hand back a build with other flags.
# RPC is always on (`qwenbench worker`, `--rpc`); BACKEND=cuda|vulkan|metal|hip adds a GPU backend (default cpu).
# Extra flags: CMAKE_ARGS="..." make install (e.g. -DCMAKE_CUDA_ARCHITECTURES=90).
LLAMA_CPP_PYTHON := llama-cpp-python==$(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
BACKEND ?= cpu
BACKEND_FLAG_cpu :=
BACKEND_FLAG_cuda := -DGGML_CUDA=on
BACKEND_FLAG_vulkan := -DGGML_VULKAN=on
BACKEND_FLAG_metal := -DGGML_METAL=on
BACKEND_FLAG_hip := -DGGML_HIP=on
ifeq ($(origin BACKEND_FLAG_$(BACKEND)),undefined)
$(error BACKEND=$(BACKEND): use cpu, cuda, vulkan, metal or hip)
endif
ifeq ($(shell uname -m),x86_64)
AMX_FLAGS := -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8
endif
LLAMA_CMAKE_ARGS ?= -DGGML_RPC=ON $(BACKEND_FLAG_$(BACKEND)) $(AMX_FLAGS) $(CMAKE_ARGS)
WHEELHOUSE ?= $(HOME)/.cache/qwenbench/wheels/$(shell echo '$(LLAMA_CPP_PYTHON) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)

# a build asked for on the command line (make install BACKEND=cuda, CMAKE_ARGS=...) that differs from the one
# installed reinstalls; a plain `make test` keeps whatever is installed
ifneq ($(filter command line environment,$(origin BACKEND) $(origin CMAKE_ARGS)),)
BUILD_FLAGS := $(VENV)/.llama-cmake-args
.PHONY: FORCE
$(BUILD_FLAGS): FORCE
	@mkdir -p $(VENV)
	@echo '$(LLAMA_CMAKE_ARGS)' | cmp -s - $@ || echo '$(LLAMA_CMAKE_ARGS)' > $@
endif

$(STAMP): pyproject.toml Makefile $(BUILD_FLAGS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		echo "Building $(LLAMA_CPP_PYTHON) (compiles llama.cpp: about 9 minutes on 2 cores, once per machine)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-cache-dir --no-deps \
			"$(LLAMA_CPP_PYTHON)" -w $(WHEELHOUSE); \
	fi
	@echo "Installing qwenbench and its dependencies"
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(WHEELHOUSE)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet --find-links $(WHEELHOUSE) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qwenbench demo

# one pytest worker per core (pytest-xdist): most tests wait on children (llama.cpp, a CLI, a loopback server), so
# two workers on 2 cores took the suite from 308 s to 184 s on a 2-core Zen 4 VM
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check qwenbench tests

# the whole comparison matrix; resumable (rerun continues), SYNTHETIC=1 measures synthetic twins, OUT=file.csv
bench-all: $(STAMP)
	$(BIN)/qwenbench bench --config configs/bench-all.toml --resume $(if $(SYNTHETIC),--synthetic) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
