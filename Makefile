# The two commands of the README: `make setup` (once) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Jina executors run in environments of their own (one per docarray generation, ONNX only, no
# torch), built with uv: pip cannot resolve jina's dependencies.
JINA_V2 := .venv-jina
JINA_V1 := .venv-jina-docarray-v1
UV := $(VENV)/bin/uv
# The README's first install line, as a user runs it: the server without torch (tests/test_light_install.py).
LIGHT := .venv-light
# The playground's browser tests drive Debian's chromium (Playwright downloads no browser here).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The container tests build the images offline: a Debian base built from Debian's packages (no
# registry answers here) and the wheels the images install, both prepared here by `make setup`.
CONTAINERS := .containers

.PHONY: setup chromium containers test test-fast lint docs bench zoo

setup: chromium
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[torch,server,audio,search,ray,dev]'
	# clip-retrieval's own client drives /knn-service in the tests; its other dependencies are its server's
	$(PY) -m pip install --quiet --no-deps 'clip-retrieval>=2.44'
	$(UV) venv --quiet --allow-existing -p $(PY) $(JINA_V2)
	$(UV) pip install --quiet -p $(JINA_V2)/bin/python -e '.[jina,audio]' 'pytest>=8'
	$(UV) venv --quiet --allow-existing -p $(PY) $(JINA_V1)
	$(UV) pip install --quiet -p $(JINA_V1)/bin/python -e '.[jina-docarray-v1,audio]' 'pytest>=8' \
		'clip-client>=0.8,<0.9'
	$(UV) venv --quiet --allow-existing -p $(PY) $(LIGHT)
	$(UV) pip install --quiet -p $(LIGHT)/bin/python -e '.[server]'
	$(MAKE) containers

# Chromium for the playground's browser tests; curl for the docs' examples (tests/test_docs_run.py);
# qemu-user to run int8 kernels as an AVX2-only CPU picks them (tests/test_int8_schemes.py).
chromium:
	@command -v chromium >/dev/null && command -v curl >/dev/null && command -v qemu-x86_64 >/dev/null \
		|| $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium curl qemu-user \
		|| ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium curl qemu-user)

containers:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null \
		|| $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc mmdebstrap \
		|| ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			podman runc mmdebstrap)
	mkdir -p $(CONTAINERS)/wheels
	test -s $(CONTAINERS)/debian-bookworm.tar \
		|| $(SUDO) deploy/container/debian-base.sh $(CONTAINERS)/debian-bookworm.tar
	for kind in server '--gpu server'; do \
		$(PY) deploy/container/requirements.py $$kind > $(CONTAINERS)/requirements.txt \
		&& $(PY) -m pip download --quiet -d $(CONTAINERS)/wheels -r $(CONTAINERS)/requirements.txt \
			'setuptools>=68' || exit 1; \
	done

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# The docs site (docs/, mkdocs.yml) into site/: strict (a broken link or anchor fails), offline.
docs:
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: lint docs
	$(VENV)/bin/pytest

# While working: the suite without the tests marked slow (ten seconds or more: full-size exports and
# quantisation, Ray, browsers).
test-fast: lint
	$(VENV)/bin/pytest -m "not slow"

bench:
	$(PY) benchmarks/cpu_encode.py

zoo:
	$(PY) scripts/generate_zoo.py
