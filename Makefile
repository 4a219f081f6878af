VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,clickhouse]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kaie-analytics demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench clients
	$(VENV)/bin/ruff format --check src tests bench clients
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench clients
	$(VENV)/bin/ruff check --fix src tests bench clients

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/query.py
	$(PY) bench/live.py
	$(PY) bench/export.py
	$(PY) bench/jobs.py
	$(PY) bench/scale_out.py
	$(PY) bench/stream_folds.py

clean:
	rm -rf $(VENV) kaie-data .pytest_cache .mypy_cache .ruff_cache
