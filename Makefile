# One-command entry points. Each target creates the virtual environment first if it is missing.
#   make study   - set up and run the embedded study (synthetic data, tiny backbone, CPU, minutes)
#   make report  - build results/report/index.html from the study's records
#   make test    - set up and run the test suite
#   make lint    - ruff and snakemake --lint
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup study report test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/snakemake --cores all --resources gpu=1
	$(VENV)/bin/snakemake report --cores 1

report: $(STAMP)
	$(VENV)/bin/snakemake report --cores 1

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake report.html
