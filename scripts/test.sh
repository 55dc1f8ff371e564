#!/usr/bin/env bash
# scripts/test.sh: the one command that runs the whole twokey test suite (also what .ci/run calls).
#
#   scripts/test.sh
#
# It is written for a fresh Debian machine, run as root, with no prompts. In order, it:
#   1. makes sure PostgreSQL answers on 127.0.0.1:5432 (trust auth, user `postgres`), starting the
#      local cluster if it is installed but stopped. A missing server is an error, never a skip.
#   2. drops `twokey_test_%` databases left over by earlier runs and exports
#      TWOKEY_TEST_PG_URL. The Rust tests create one uuid-named database per test from it and drop it.
#   3. installs the test peers (tests/peers: npm packages, chromium for playwright), but only if
#      tests/peers/package.json exists and only what is missing.
#   4. checks deploy/ offline (scripts/check-deploy.sh: Kubernetes and compose schemas, Bicep parse,
#      hadolint, systemd-analyze), then
#      runs cargo fmt --check, cargo clippy (-D warnings), cargo test --all-targets and the browser
#      tests (node --test tests/peers/, chromium via playwright-core), stopping at
#      the first failure.
#   5. when everything passed, drops the test databases again and prints the total time.
#
# If TWOKEY_TEST_PG_URL is already set, that server is used as given. The local server is then
# neither started nor cleaned. Two runs at once against the same local server would drop each
# other's databases, so don't do that.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f Cargo.toml ] || { echo "test.sh: cannot find the twokey repository root" >&2; exit 1; }

readonly PG_HOST=127.0.0.1
readonly PG_PORT=5432
readonly LOCAL_PG_URL="postgres://postgres@${PG_HOST}:${PG_PORT}/postgres"
readonly PEERS_DIR=tests/peers

started=$SECONDS
current_step="setup"
manage_local_pg=1
apt_updated=0

# Colour only on a terminal, so CI logs stay plain.
if [ -t 1 ]; then
    bold=$'\033[1m' red=$'\033[1;31m' green=$'\033[1;32m' plain=$'\033[0m'
else
    bold='' red='' green='' plain=''
fi

elapsed() {
    local s=$((SECONDS - started))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

step() {
    current_step=$1
    printf '\n%s==> %s%s  (%s elapsed)\n' "$bold" "$1" "$plain" "$(elapsed)"
}

die() {
    printf '\ntest.sh: %s\n' "$*" >&2
    exit 1
}

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n%s*** FAILED in step: %s (exit %d) after %s%s\n' \
            "$red" "$current_step" "$rc" "$(elapsed)" "$plain" >&2
    fi
}
trap on_exit EXIT

# Print a database URL with any password replaced by ***.
redact_url() {
    sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#' <<<"$1"
}

apt_install() {
    [ "$(id -u)" -eq 0 ] || die "need root to run: apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -q
        apt_updated=1
    fi
    apt-get install -y -q "$@"
}

# ---- PostgreSQL ------------------------------------------------------------------------------

# -w: never prompt for a password; fail instead.
psql_local() {
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -w -X -q -Atc "$1"
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1
}

ensure_local_postgres() {
    if ! command -v pg_isready >/dev/null || ! command -v psql >/dev/null; then
        die "PostgreSQL client tools (pg_isready, psql) are not installed.
  Install and start PostgreSQL (apt-get install -y postgresql) with trust auth for host 127.0.0.1,
  or point TWOKEY_TEST_PG_URL at a server the tests may create and drop databases on."
    fi

    if ! pg_ready; then
        # The first cluster under /etc/postgresql, i.e. what `ls /etc/postgresql | head -1` picks.
        local clusters=(/etc/postgresql/*/main) version
        if [ -d "${clusters[0]}" ] && command -v pg_ctlcluster >/dev/null; then
            version=$(basename "$(dirname "${clusters[0]}")")
            echo "PostgreSQL is not answering on ${PG_HOST}:${PG_PORT}; starting cluster ${version}/main"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
                echo "pg_ctlcluster ${version} main start failed (see above); waiting anyway"
            local i
            for i in $(seq 1 30); do
                pg_ready && break
                [ "$i" -eq 30 ] || sleep 1
            done
        fi
    fi

    pg_ready || die "no PostgreSQL server answers on ${PG_HOST}:${PG_PORT}, and none could be started.
  The PostgreSQL tests are part of the suite and are not skipped. Either start a server there
  (trust auth, user postgres; e.g. apt-get install -y postgresql, then
  pg_ctlcluster --skip-systemctl-redirect <version> main start), or set TWOKEY_TEST_PG_URL."

    psql_local 'select 1' >/dev/null ||
        die "PostgreSQL answers on ${PG_HOST}:${PG_PORT} but user postgres cannot log in without a password.
  The tests need trust auth there (pg_hba.conf: host all all 127.0.0.1/32 trust), or set TWOKEY_TEST_PG_URL."
    echo "PostgreSQL: $(psql_local 'show server_version') on ${PG_HOST}:${PG_PORT}"
}

# Drop every database named twokey_test_* on the local server (left by this suite).
drop_test_databases() {
    local dbs db n=0
    dbs=$(psql_local "select datname from pg_database where starts_with(datname, 'twokey_test_')")
    while IFS= read -r db; do
        [ -n "$db" ] || continue
        psql_local "drop database if exists \"${db}\" with (force)" >/dev/null
        n=$((n + 1))
    done <<<"$dbs"
    echo "dropped ${n} test database(s) named twokey_test_*"
}

# ---- test peers (OpenID provider, SMTP sink, fake ARM, browser) -------------------------------

install_peers() {
    if [ ! -f "$PEERS_DIR/package.json" ]; then
        echo "no $PEERS_DIR/package.json: no peers to install"
        return 0
    fi

    local missing=()
    command -v npm >/dev/null || missing+=(npm)
    if grep -q playwright "$PEERS_DIR/package.json" && [ ! -x /usr/bin/chromium ]; then
        missing+=(chromium)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt_install "${missing[@]}"
    fi

    # The browser tests drive the system chromium; never download one.
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    # npm records what it installed in node_modules/.package-lock.json; when that is newer than
    # the manifests, the install is current and npm (which may need the network) is not run.
    local stamp="$PEERS_DIR/node_modules/.package-lock.json"
    local lock="$PEERS_DIR/package-lock.json"
    if [ -f "$stamp" ] && [ "$stamp" -nt "$PEERS_DIR/package.json" ] &&
        { [ ! -f "$lock" ] || [ "$stamp" -nt "$lock" ]; }; then
        echo "$PEERS_DIR/node_modules is up to date"
    elif [ -f "$lock" ]; then
        npm ci --prefix "$PEERS_DIR" --no-audit --no-fund
    else
        npm install --prefix "$PEERS_DIR" --no-audit --no-fund
    fi
    # npm install may write package-lock.json after its own record; mark the install as current.
    if [ -f "$stamp" ]; then touch "$stamp"; fi
}

# ---- Rust toolchain ------------------------------------------------------------------------

ensure_rust() {
    command -v cargo >/dev/null || die "cargo is not installed: install Rust (rustup, see Cargo.toml for rust-version)"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo fmt / cargo clippy are missing and rustup is not available to add them"
        rustup component add rustfmt clippy
    fi
    echo "$(cargo --version); $(cargo fmt --version); $(cargo clippy --version)"
}

# ---- the run -------------------------------------------------------------------------------

step "PostgreSQL"
if [ -n "${TWOKEY_TEST_PG_URL:-}" ]; then
    manage_local_pg=0
    echo "using TWOKEY_TEST_PG_URL from the environment: $(redact_url "$TWOKEY_TEST_PG_URL")"
    echo "(the local server is left alone: not started, not cleaned)"
    if command -v psql >/dev/null; then
        psql "$TWOKEY_TEST_PG_URL" -w -X -q -Atc 'select 1' >/dev/null ||
            die "cannot connect to TWOKEY_TEST_PG_URL ($(redact_url "$TWOKEY_TEST_PG_URL"))"
    fi
else
    ensure_local_postgres
    drop_test_databases
    export TWOKEY_TEST_PG_URL="$LOCAL_PG_URL"
    echo "TWOKEY_TEST_PG_URL=$TWOKEY_TEST_PG_URL"
fi

step "test peers"
install_peers
# The audit tests check the README's jq + sha256sum recipe (scripts/audit-verify-jsonl.sh).
command -v jq >/dev/null || apt_install jq

step "deploy/ checks (scripts/check-deploy.sh)"
scripts/check-deploy.sh

step "Rust toolchain"
ensure_rust

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
# The API tests log at trace level into target/tmp/test-logs; start from an empty directory so
# the search below sees this run's logs only.
rm -rf target/tmp/test-logs
scripts/check-logs.sh --self-test
cargo test --all-targets

step "no secret in any log line (scripts/check-logs.sh)"
scripts/check-logs.sh

# The browser tests drive `twokey demo` (built by the step above) in chromium.
step "browser tests (node --test tests/peers/)"
TWOKEY_BIN="$PWD/target/debug/twokey" node --test tests/peers/

step "clean up"
if [ "$manage_local_pg" -eq 1 ]; then
    drop_test_databases
else
    echo "TWOKEY_TEST_PG_URL was given: leaving that server as it is"
fi

current_step="done"
printf '\n%s*** all tests passed in %s%s\n' "$green" "$(elapsed)" "$plain"
