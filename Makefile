# The two front-door commands: `make run` and `make test`. Everything else is a helper.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000

.PHONY: run test setup setup-dev lint check-layers unit integration clean

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(PIP) install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

## make run: install and start the relay on its embedded defaults (demo feed) at http://localhost:$(PORT)
run: setup
	PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

## make test: install what the tests need and run lint, layering check and the whole suite
test: setup-dev
	bash .ci/test

lint: setup-dev
	$(VENV)/bin/ruff check handlers webapp tests wsgi.py gunicorn.conf.py

unit: setup-dev
	$(PY) -m pytest tests/unit -q

integration: setup-dev
	$(PY) -m pytest tests/integration -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
