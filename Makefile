# Thin wrappers over scripts/ (which work without make too).
.PHONY: install run test lint check migrate

install:
	scripts/bootstrap

run:
	scripts/run-demo

test:
	scripts/test

lint:
	scripts/lint

check: lint test

migrate: install
	.venv/bin/imagegen-gateway migrate
