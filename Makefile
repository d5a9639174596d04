# pgward — developer entry points. `make help` lists them.

# The image: `make image` builds $(IMAGE), `make push` logs in to $(REGISTRY_ADDR) and pushes
# it. The names are those of the postgres+WAL-G images' Makefiles:
#   make push REGISTRY_ADDR=registry.example.com REGISTRY_USER=me REGISTRY_PASSWORD=... \
#             IMAGE_NAME=team/pgward IMAGE_TAG=1.0-pg17 POSTGRES_VERSION=17
# Without registries or the Rust build: BASE_IMAGE, any image laid out like the official
# postgres one, and PGWARD_BIN, a pgward binary built on the host (glibc 2.36 or older):
#   make image BASE_IMAGE=my/postgres:15 PGWARD_BIN=target/release/pgward
POSTGRES_VERSION ?= 18
BASE_IMAGE ?= postgres:$(POSTGRES_VERSION)
PGWARD_BIN ?=
IMAGE_NAME ?= pgward
IMAGE_TAG ?= dev
REGISTRY_ADDR ?=
REGISTRY_USER ?=
REGISTRY_PASSWORD ?=
# To `docker login` through the environment and stdin: never on a command line.
export REGISTRY_PASSWORD
DOCKER ?= docker
IMAGE ?= $(if $(REGISTRY_ADDR),$(REGISTRY_ADDR)/)$(IMAGE_NAME):$(IMAGE_TAG)
CARGO ?= cargo
# `make run`'s binary: the dev profile (no LTO, the codecs optimised: Cargo.toml); from an empty
# target/ it built in 3 min 38 s on 2 cores (2026-12-07). The image, `make build` and the
# benchmarks use the release profile (full LTO, several minutes more).
DEV_BIN := target/debug/pgward

# `make run` only: the dev cluster's superuser password (configs/dev.yaml reads it).
POSTGRES_PASSWORD ?= pgward-dev
export POSTGRES_PASSWORD

# Where `make run` keeps its cluster, socket and control socket (configs/dev.yaml reads it; it
# must be absolute). As root, postgres runs as the `postgres` user, which must be able to reach
# this directory; when it cannot (a checkout under /root, say), `make run` says so and how to
# choose another.
PGWARD_HOME ?= $(CURDIR)/.pgward
override PGWARD_HOME := $(abspath $(PGWARD_HOME))
export PGWARD_HOME

.DEFAULT_GOAL := help
.PHONY: help build run test test-default test-majors deps lint doc image push bench bench-wal bench-backup bench-exporter bench-scale bench-image bench-s3 bench-fleet bench-deps clean

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z0-9-]+:.*## / { printf "  make %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## cargo build --release
	$(CARGO) build --release --locked

run: ## build (dev profile), then run pgward in the foreground on configs/dev.yaml (state in ./.pgward/)
	$(CARGO) build --locked
	@mkdir -p "$(PGWARD_HOME)/data" "$(PGWARD_HOME)/run"
	@if [ "$$(id -u)" = 0 ]; then \
		if ! runuser -u postgres -- test -x "$(PGWARD_HOME)" 2>/dev/null; then \
			echo "make run: the postgres user cannot reach $(PGWARD_HOME)" >&2; \
			echo "HINT: make run PGWARD_HOME=/var/tmp/pgward-dev" >&2; \
			exit 1; \
		fi; \
		chown postgres:postgres "$(PGWARD_HOME)/data" "$(PGWARD_HOME)/run"; \
	fi
	$(DEV_BIN) run --config configs/dev.yaml

# The tests arm failpoints (src/failpoint.rs): the binary they run is built with them.
test: deps lint ## install test dependencies, lint, then run every test, and the data-path tests on each major
	@status=0; \
	$(MAKE) --no-print-directory test-default || status=1; \
	$(MAKE) --no-print-directory test-majors || status=1; \
	exit $$status

test-default: ## every test, on the default server (Debian's)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace --locked --features failpoints --no-fail-fast"; \
		$(CARGO) nextest run --workspace --locked --features failpoints --no-fail-fast; \
	else \
		echo "cargo-nextest not found, using cargo test"; \
		$(CARGO) test --workspace --locked --features failpoints --no-fail-fast; \
	fi

# The other majors the data-path tests run on (scripts/pg-majors.sh installs them in .tools/),
# and those tests: bootstrap, WAL archive and fetch, full and block-level incremental backups,
# restores to the latest point and to a time, restore-test, verify, backups on a hot standby,
# the exporter's families and the WAL of every resource manager (names matched as substrings). Each major's run has its own
# clusters, ports and repositories: they run side by side.
PG_MAJORS ?= 14 16 17 18
MAJORS_TESTS := \
	postgres_run::bootstraps_like_the_official_image \
	wal::archives_every_segment_under_pgbench \
	backup::a_full_backup_restores_to_the_end_of_the_archive \
	incremental::incremental_backups_store_what_changed \
	incremental::an_incremental_after_a_small_update \
	restore_test::restore_test_to_latest \
	restore_test::restore_test_passes_a_good_backup \
	verify::verify_passes_a_good_backup \
	standby::backups_taken_on_a_standby \
	majors::

test-majors: ## the data-path tests on each of PG_MAJORS, side by side
ifneq ($(strip $(PG_MAJORS)),)
	$(CARGO) build --tests --locked --features failpoints
	@$(MAKE) --no-print-directory -j$(words $(PG_MAJORS)) --output-sync=target \
		$(addprefix test-pg,$(PG_MAJORS))
endif

test-pg%: ## the data-path tests on one major: make test-pg17
	@echo "== PostgreSQL $*: the data-path tests"
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		PGWARD_TEST_PG_MAJOR=$* $(CARGO) nextest run --locked --features failpoints \
			--no-fail-fast --test integration $(MAJORS_TESTS); \
	else \
		PGWARD_TEST_PG_MAJOR=$* $(CARGO) test --locked --features failpoints \
			--no-fail-fast --test integration -- $(MAJORS_TESTS); \
	fi

deps: ## install what the tests need (PostgreSQL, process tools; s3s-fs, Azurite, promtool, PostgreSQL 14, 16, 17, 18 in .tools/)
	scripts/test-deps.sh

lint: doc ## rustfmt, clippy (warnings are errors) and rustdoc
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked --features failpoints -- -D warnings
	$(CARGO) clippy --locked -- -D warnings

doc: ## build the API docs with warnings as errors
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked

# With PGWARD_BIN, the binary is copied into the build context (image/prebuilt/, git-ignored,
# removed after the build) and the Dockerfile's `prebuilt` target skips the Rust stage.
image: ## build the container image $(IMAGE) on $(BASE_IMAGE) (PGWARD_BIN=path: no Rust build)
ifeq ($(strip $(PGWARD_BIN)),)
	$(DOCKER) build -f image/Dockerfile --build-arg POSTGRES_VERSION=$(POSTGRES_VERSION) \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .
else
	install -D -m 0755 "$(PGWARD_BIN)" image/prebuilt/pgward
	$(DOCKER) build -f image/Dockerfile --target prebuilt --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		-t $(IMAGE) . ; status=$$?; rm -f image/prebuilt/pgward; exit $$status
endif

# The password goes to `docker login` on stdin, never on its command line; without
# REGISTRY_USER, whatever login the Docker config already holds is used.
push: image ## log in to $(REGISTRY_ADDR) and push $(IMAGE)
	@if [ -n "$(REGISTRY_USER)" ]; then \
		printf '%s' "$$REGISTRY_PASSWORD" | $(DOCKER) login --username "$(REGISTRY_USER)" --password-stdin $(REGISTRY_ADDR); \
	fi
	$(DOCKER) push $(IMAGE)

bench-deps: ## install supervisor, postgres_exporter, yacron and pgbackrest for the benchmarks
	scripts/bench-deps.sh

bench: build bench-deps ## startup/shutdown/memory benchmark (bench/README.md)
	bench/startup.sh

bench-wal: build bench-deps ## WAL archiving throughput: cp, pgBackRest, pgward (bench/README.md)
	bench/wal-archive.sh

bench-backup: build bench-deps ## backup and restore: pg_basebackup, pgBackRest, pgward (bench/README.md)
	bench/backup.sh

bench-exporter: build bench-deps ## scrapes: postgres_exporter vs pgward's /metrics (bench/README.md)
	bench/exporter.sh

bench-scale: build ## memory and time at 100,000 files and 1,000 WAL segments (bench/README.md)
	bench/scale.sh

bench-s3: build bench-deps ## backup, restore and WAL archiving on file:// and on S3 at 0/10/25 ms, beside pgBackRest (bench/README.md)
	bench/s3.sh

bench-fleet: build bench-deps ## FLEET_N (50) clusters archiving to one S3 server, then 30 s of 503 SlowDown (bench/README.md)
	bench/fleet.sh

bench-image: build ## the image against its base: size, run→healthy, stop, idle memory (bench/README.md)
	bench/image.sh

clean: ## remove build output and ./.pgward (the dev cluster and the bench venv)
	$(CARGO) clean
	rm -rf .pgward
