# twokey developer tasks. `make` (or `make help`) lists them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help demo test fmt lint migrate-new

help: ## list the targets
	@echo "make targets:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

demo: ## run `twokey demo`: SQLite in a temp dir, dev sign-in, simulated Azure, mail to files
	$(CARGO) run -- demo

test: ## the whole suite (fmt, clippy, tests on SQLite and PostgreSQL, peers): scripts/test.sh
	scripts/test.sh

fmt: ## format the code (cargo fmt)
	$(CARGO) fmt

lint: ## clippy on all targets, warnings are errors
	$(CARGO) clippy --all-targets -- -D warnings

migrate-new: ## add a migration on both backends: make migrate-new NAME=add_something
	@name='$(NAME)'; \
	if [ -z "$$name" ]; then \
		echo "usage: make migrate-new NAME=short_snake_case_name" >&2; exit 2; \
	fi; \
	if [[ ! "$$name" =~ ^[a-z0-9_]+$$ ]]; then \
		echo "NAME must be lower-case letters, digits and _ (got '$$name')" >&2; exit 2; \
	fi; \
	last=$$(find migrations/sqlite migrations/postgres -maxdepth 1 -name '[0-9][0-9][0-9][0-9]_*.sql' -printf '%f\n' \
		| cut -c1-4 | sort -n | tail -n 1); \
	next=$$(printf '%04d' $$((10#$${last:-0} + 1))); \
	for backend in sqlite postgres; do \
		case $$backend in sqlite) flavour=SQLite; other=postgres;; postgres) flavour=PostgreSQL; other=sqlite;; esac; \
		file="migrations/$$backend/$${next}_$${name}.sql"; \
		if [ -e "$$file" ]; then echo "$$file already exists" >&2; exit 1; fi; \
		printf '%s\n' \
			"-- $${next}_$${name}: twokey schema change, $$flavour flavour." \
			"-- Keep in step with ../$$other/$${next}_$${name}.sql: same tables, same columns, same meaning." \
			"-- Both files are applied once and never edited afterwards; change the schema with a new pair." \
			"" > "$$file"; \
		echo "created $$file"; \
	done
