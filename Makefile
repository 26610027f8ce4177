# kern_d2: the two commands of the README, plus helpers. Every target installs what it needs first (idempotent).
PY := .venv/bin/python

.PHONY: install demo test cuda-build clean

install:
	bash scripts/install.sh

# The main job: synth benchmark -> detector -> priors -> KERN, VRFC, FREQ in PredCls and SGCls -> table, pictures.
demo: install
	$(PY) tools/run_demo.py

# The test suite (CPU).
test: install
	$(PY) -m pytest -q tests

# Check that the CUDA kernels compile (nvcc needed; no GPU needed). Arch 9.0 = H100/H200.
cuda-build: install
	CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(PY) setup.py -q build_ext \
	  --build-temp build/cuda-check/temp --build-lib build/cuda-check/lib
	@echo "cuda-build: CUDA kernels compiled"

clean:
	rm -rf build *.egg-info kern_d2/_C*.so
