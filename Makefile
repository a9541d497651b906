# Set-up and checks for mmseg-ovss. Every target creates the project-local
# virtual environment when it is missing or stale and reuses it otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmseg-ovss-installed
REQS := requirements/build.txt requirements/runtime.txt requirements/tests.txt requirements/optional.txt setup.py
PYTEST_ARGS ?=
# OpenCV wheels other than opencv-python-headless (requirements/runtime.txt)
OTHER_OPENCV := opencv-python opencv-contrib-python opencv-contrib-python-headless

.PHONY: env test demo benchmark clean-env

env: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/build.txt
	# mmcv picks the OpenCV flavour already installed: use the headless one.
	$(PY) -m pip install -q 'opencv-python-headless>=4.10'
	# mmcv 2.1.0 with its compiled ops, built against the torch above
	# (about 20 minutes on 2 cores the first time; pip caches the wheel).
	$(PY) -c "import mmcv.ops" 2>/dev/null || \
	    MMCV_WITH_OPS=1 MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation mmcv==2.1.0
	$(PY) -m pip install -q -r requirements/runtime.txt -r requirements/tests.txt
	$(PY) -m pip install -q --no-build-isolation -r requirements/optional.txt || \
	    echo "warning: optional DenseCRF (pydensecrf2) did not build; PnP-OVSS runs without CRF"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# mmengine's wheel requires opencv-python; two OpenCV wheels overwrite
	# each other's cv2: remove the others, then reinstall the same headless
	# version (the removal deleted the cv2 files the two shared).
	if $(PY) -m pip show -q $(OTHER_OPENCV) >/dev/null 2>&1; then \
	    $(PY) -m pip uninstall -q -y $(OTHER_OPENCV) && \
	    $(PY) -m pip install -q --force-reinstall --no-deps \
	        "opencv-python-headless==$$($(PY) -m pip show opencv-python-headless | sed -n 's/^Version: //p')"; \
	fi
	$(PY) -c "import cv2, mmcv.ops, mmseg, mmseg_ovss, open_clip, timm, transformers; print('environment ready')"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py $(DEMO_ARGS)

benchmark: $(STAMP)
	$(PY) tools/benchmark.py $(BENCH_ARGS)

clean-env:
	rm -rf $(VENV)
