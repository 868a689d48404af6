# The two set-up commands of the README. Each creates the virtual environment first if it is missing.
#   make repro   run the pipeline (dvc repro) on the profile set in params.yaml
#   make test    run the test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: repro test

# Every package comes at the version pinned in requirements.lock (README: how to update it). The lock holds
# setuptools too, so the editable install builds with the locked backend (--no-build-isolation) instead of
# fetching the newest one, and bnnrepro's own dependencies are all in it already (--no-deps).
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: $(STAMP)
	$(PY) -m pytest
