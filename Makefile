# The two commands of the README: `make demo` and `make test`.
# Both create .venv on a fresh machine and install medsight with its dependencies.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsight demo

test: $(STAMP)
	bash scripts/install_browser.sh || echo "chromium could not be installed: the browser test will skip, saying why"
	bash scripts/orthanc.sh || echo "orthanc could not be installed: the PACS tests will skip, saying why"
	bash scripts/dicom3tools.sh || echo "dicom3tools could not be installed: the DICOM conformance test will skip, saying why"
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup --timeout 600

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build src/*.egg-info
