# The two commands of the README: `make run` brings the product up on embedded defaults,
# `make test` installs what the tests need and runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The accessibility rules the browser tests audit the pages with (from the npm registry, into the virtualenv).
AXE_CORE := 4.14.1
# Where `make run` serves the product, and its session origins (the session proxy).
PORT ?= 8000
SESSION_PORT ?= 8001

.PHONY: run test check services images

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/test-installed: $(VENV)/installed tests/requirements.txt
	$(PY) -m pip install --quiet -r tests/requirements.txt
	command -v chromium >/dev/null && command -v runc >/dev/null && command -v rclone >/dev/null && command -v slirp4netns >/dev/null && command -v skopeo >/dev/null && command -v slurmctld >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver runc e2fsprogs rclone fuse3 slirp4netns skopeo umoci slurm-wlm munge)
	images/vscode/install-code-server.sh
	npm install --silent --no-fund --no-audit --prefix $(VENV)/axe axe-core@$(AXE_CORE)
	touch $@

# As root, sessions run in containers from the template images: built (or found cached) first.
run: $(VENV)/installed
	[ "$$(id -u)" != 0 ] || $(MAKE) images
	$(PY) manage.py prepare
	$(PY) manage.py runstudios --port $(PORT) --session-port $(SESSION_PORT)

# The template images (images/build.sh), built without a Docker engine and pushed to the loopback registry it
# starts: the base root filesystem and unchanged layers are cached, so a second run takes seconds.
images:
	command -v mmdebstrap >/dev/null && command -v buildah >/dev/null && command -v docker-registry >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap buildah skopeo umoci docker-registry)
	images/build.sh

# PostgreSQL and Redis run on this machine; start them when they are not running.
services:
	pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /tmp
	for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1

# The tools the code is written for; `make test` runs them first and stops when one fails.
check: $(VENV)/test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=. $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy studios checkpoints studios_project tests

# Sessions unpack the images they run into a folder of the run's own (about 3.5 GB), removed afterwards.
test: $(VENV)/test-installed check services images
	images="$$(mktemp -d)"; trap 'rm -rf --one-file-system "$$images"' EXIT; \
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} \
	STUDIOS_DATA_DIR=$${STUDIOS_DATA_DIR:-$$(mktemp -d)} \
	STUDIOS_IMAGE_CACHE_DIR=$${STUDIOS_IMAGE_CACHE_DIR:-$$images} \
	sh -c '$(PY) manage.py prepare >/dev/null && $(PY) -m pytest $(PYTEST_ARGS)'
