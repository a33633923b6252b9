# lazyinit: `make demo` and `make test` on a fresh Debian 12 machine (they
# install what is missing), or on a machine with a pip torch
# (PYTHON=/path/to/python3, detected where it is the accelerator image's).

ACCEL_PYTHON := /opt/torch/.venv/bin/python3
ifeq ($(origin PYTHON), undefined)
  ifneq ($(wildcard $(ACCEL_PYTHON)),)
    PYTHON := $(ACCEL_PYTHON)
  else
    PYTHON := /usr/bin/python3
  endif
endif

VENV := .venv
VPY := $(VENV)/bin/python
BUILD := build
JOBS ?= $(shell nproc)
# Extra CMake options, e.g. CMAKE_ARGS=-DLAZYINIT_CUDA_KERNELS=OFF to skip the CUDA kernels.
CMAKE_ARGS ?=

# Debian packages, installed only when PYTHON is Debian's own python3.
APT_PACKAGES := cmake g++ make ccache libtorch-dev python3-torch python3-dev \
  python3-venv python3-pybind11 pybind11-dev libgtest-dev python3-pytest \
  python3-hypothesis python3-tqdm python3-matplotlib python3-psutil \
  python3-torchvision python3-torchaudio python3-pytest-xdist clang-format python3-flake8

# `make test` runs every test on each torch leg: the host's torch (Debian
# 12: 1.13) and, where PYTHON is Debian's own python3 (apt and debootstrap at
# hand), torch 2.x from Debian unstable in a root kept under $(BUILD)
# (tests/legs/unstable_root.sh; TORCH2_LEG=0 skips it).
TORCH2_ROOT := $(BUILD)/torch2-root
ifeq ($(PYTHON),/usr/bin/python3)
  TORCH2_LEG ?= 1
else
  TORCH2_LEG ?= 0
endif

.PHONY: all deps venv build lint test test-host test-torch2 test-cpp test-python test-heap test-gpu demo bench \
  bench-gpu bench-dist bench-dist-torch2 asan clean fuzz fuzz-torch2

all: build

deps:
	@if [ "$(PYTHON)" = "/usr/bin/python3" ] && command -v dpkg-query >/dev/null; then \
	  missing=""; \
	  for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi

# A venv that sees PYTHON's packages (torch) and this checkout's package.
$(VPY): | deps
	$(PYTHON) -m venv --system-site-packages --without-pip $(VENV)
	$(VPY) -c "import sys; print(sys.version)" >/dev/null

venv: $(VPY)
	@site=$$($(VPY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	$(PYTHON) -c "import site, sys; print('\n'.join(p for p in site.getsitepackages() + [site.getusersitepackages()]))" > $$site/zz_parent_site.pth; \
	echo "$(CURDIR)/python" > $$site/lazyinit.pth

build: deps venv
	@prefix=$$($(PYTHON) -c "import os, torch.utils as u; p = u.cmake_prefix_path; print(p if os.path.isdir(os.path.join(p, 'Torch')) else '')"); \
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPython3_EXECUTABLE=$(PYTHON) $${prefix:+-DCMAKE_PREFIX_PATH=$$prefix} $(CMAKE_ARGS) >$(BUILD).log 2>&1 \
	  || { cat $(BUILD).log; exit 1; }
	cmake --build $(BUILD) -j $(JOBS)
	$(VPY) -c "import lazyinit; print('lazyinit OK: torch', __import__('torch').__version__, 'device type', lazyinit.device_type)"

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# pytest-xdist spreads the tests over the cores where it is installed.
test-python: build
	@xdist=$$($(VPY) -c "import xdist" 2>/dev/null && echo "-n $(JOBS)"); \
	echo "$(VPY) -m pytest tests/python -q $$xdist"; \
	$(VPY) -m pytest tests/python -q $$xdist

# The Python suite again under glibc's heap checks: MALLOC_CHECK_=3 aborts
# on a corrupted heap or a bad free, MALLOC_PERTURB_ fills freed memory so
# that a read of it shows as a wrong value.
HEAP_CHECK_LIB := $(firstword $(wildcard /usr/lib/*/libc_malloc_debug.so.0 /lib/*/libc_malloc_debug.so.0))
test-heap: build
	@[ -n "$(HEAP_CHECK_LIB)" ] || { echo "test-heap: glibc's libc_malloc_debug.so.0 (glibc >= 2.34) not found"; exit 1; }
	@xdist=$$($(VPY) -c "import xdist" 2>/dev/null && echo "-n $(JOBS)"); \
	echo "heap checks: $(VPY) -m pytest tests/python -q $$xdist"; \
	LD_PRELOAD=$(HEAP_CHECK_LIB) MALLOC_CHECK_=3 MALLOC_PERTURB_=165 \
	  $(VPY) -m pytest tests/python -q -p no:cacheprovider $$xdist

# One leg: every test on PYTHON's torch.
test-host: test-cpp test-python

# The torch-2.x leg, in the Debian-unstable root.
test-torch2:
	tests/legs/unstable_root.sh run $(TORCH2_ROOT) test-host TORCH2_LEG=0 JOBS=$(JOBS)

# Style, checked rather than remembered: every C++ file against .clang-format,
# and pyflakes' checks (through flake8, which honours `# noqa`) on all Python.
CLANG_FORMAT ?= clang-format
lint: deps
	@files=$$(git ls-files '*.cpp' '*.h' '*.cu'); \
	$(CLANG_FORMAT) --dry-run --Werror $$files && echo "clang-format: $$(echo $$files | wc -w) files clean"
	$(PYTHON) -m flake8 --select=F python tests benchmarks examples && echo "flake8: clean"
	python3 tests/lint/subsystem_deps.py --check >/dev/null && echo "subsystem dependencies: as in docs/architecture.md"

# The heap-checked run is made on the host's torch (once per `make test`).
test: test-host test-heap
ifeq ($(TORCH2_LEG),1)
test: lint test-torch2
endif

# On a machine with a CUDA GPU: every GPU test in one command.
# test_distributed_gpu.py: NCCL world size 1, gloo processes sharing the
# GPU, and one rank of 8 of torch's fake process group.
test-gpu: build
	USE_LIBUV=0 $(VPY) -m pytest -q -rfE tests/python/test_cuda.py tests/python/test_hf_timm.py \
	  tests/python/test_shard_cuda.py tests/python/test_distributed_gpu.py tests/python/test_pretrained.py

# A differential fuzzing campaign (docs/fuzzing.md), on PYTHON's torch or
# in the torch-2.x root: make fuzz FUZZ_ARGS="--count 100000 --start 0".
FUZZ_ARGS ?= --count 10000
fuzz: build
	$(VPY) benchmarks/fuzz_run.py $(FUZZ_ARGS)

fuzz-torch2:
	tests/legs/unstable_root.sh run $(TORCH2_ROOT) fuzz TORCH2_LEG=0 "FUZZ_ARGS=$(FUZZ_ARGS)"

bench-gpu: build
	$(VPY) benchmarks/gpu_materialize.py --hf --plot docs/gpu_materialize.png

# Distributed preparation (docs/benchmarks.md): FSDP2 of a 1B-shaped HF
# Llama over 4 gloo CPU processes; needs torch >= 2.6 and transformers
# (on Debian 12: make bench-dist-torch2, in the torch-2.14 root).
bench-dist: build
	$(VPY) benchmarks/distributed.py --shape 1b --world 4 --dtype bfloat16

bench-dist-torch2:
	tests/legs/unstable_root.sh run $(TORCH2_ROOT) bench-dist TORCH2_LEG=0

demo: build
	$(VPY) benchmarks/demo.py

bench: build
	$(VPY) benchmarks/construct.py

# The C++ tests under AddressSanitizer + LeakSanitizer (clang's runtime).
ASAN_BUILD := build-asan
asan: deps
	@if [ "$(PYTHON)" = "/usr/bin/python3" ] && ! dpkg-query -W -f='$${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "install ok installed"; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq clang libclang-rt-14-dev; \
	fi
	@prefix=$$($(PYTHON) -c "import os, torch.utils as u; p = u.cmake_prefix_path; print(p if os.path.isdir(os.path.join(p, 'Torch')) else '')"); \
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
	  -DLAZYINIT_SANITIZE=address -DLAZYINIT_BUILD_PYTHON=OFF \
	  $${prefix:+-DCMAKE_PREFIX_PATH=$$prefix} >$(ASAN_BUILD).log 2>&1 || { cat $(ASAN_BUILD).log; exit 1; }
	# Test discovery runs the binary at build time: no leak check there.
	ASAN_OPTIONS=detect_leaks=0 cmake --build $(ASAN_BUILD) -j $(JOBS)
	tests/cpp/check_leaks.sh $(ASAN_BUILD)/lazyinit_cpp_tests

clean:
	@if [ -d $(TORCH2_ROOT) ] || [ -d $(TORCH2_ROOT).new ]; then \
	  tests/legs/unstable_root.sh clean $(TORCH2_ROOT) && tests/legs/unstable_root.sh clean $(TORCH2_ROOT).new; fi
	rm -rf $(BUILD) $(BUILD).log $(ASAN_BUILD) $(ASAN_BUILD).log $(VENV) python/lazyinit/*.so
