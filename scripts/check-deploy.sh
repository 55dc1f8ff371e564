#!/usr/bin/env bash
# scripts/check-deploy.sh: check what can be checked offline about deploy/ (scripts/test.sh runs it).
#
#   scripts/check-deploy.sh
#
# It installs its own tools: Python packages (pinned in scripts/check-deploy-requirements.txt)
# into a venv under target/deploy-tools/, and Debian's systemd (for systemd-analyze) when it is
# missing and we are root. Warm, the whole run takes about a second.
#
# What it checks:
#   - every YAML file under deploy/ parses (and yamllint finds nothing wrong);
#   - the Kubernetes objects (kustomization.yaml's resources, the generated ConfigMap, the
#     example Secret) against the Kubernetes OpenAPI schemas, strictly (kubernetes-validate),
#     and what the Deployment must keep: 2 replicas, the /healthz and /readyz probes, non-root,
#     read-only root, no capabilities, RuntimeDefault seccomp, no service account token, a grace
#     period above twokey's drain time, the PDB and the NetworkPolicy;
#   - compose.yaml against the Compose Specification schema (check-jsonschema's vendored copy),
#     and its secrets, files and local-only ports;
#   - main.bicep: parsed with the tree-sitter Bicep grammar, its parameters against
#     main.bicepparam, its resource API versions against the list checked in the Azure REST API
#     specifications. It is NOT compiled: no Bicep compiler installs from the registries this
#     project reaches (run `az bicep build` before deploying);
#   - the Dockerfile with hadolint, that its build context holds everything the build reads, and
#     its HEALTHCHECK command against a local HTTP server;
#   - twokey.service with `systemd-analyze verify` (any warning fails) and
#     `systemd-analyze security`: its exposure must stay at or below 1.2;
#   - every TWOKEY_… variable in deploy/ is a setting deploy/config.example.toml documents, and
#     that file mentions every key of src/config.rs.
# (That the configs under deploy/ validate is a Rust test: config::tests::the_deploy_configs_validate.)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f Cargo.toml ] || { echo "check-deploy.sh: cannot find the twokey repository root" >&2; exit 1; }

readonly TOOLS=target/deploy-tools
readonly VENV=$TOOLS/venv
readonly REQS=scripts/check-deploy-requirements.txt
# systemd-analyze security's rating of deploy/twokey.service must not get worse than this.
readonly MAX_EXPOSURE=1.2

failed=0
fail() {
    printf 'FAIL %s\n' "$*"
    failed=$((failed + 1))
}

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "check-deploy.sh: need root to run: apt-get install $*" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "$@" >/dev/null
}

# ---- tools -------------------------------------------------------------------------------------

command -v python3 >/dev/null || apt_install python3
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$VENV"; }
fi
# Reinstall only when the requirements changed.
stamp=$VENV/.requirements
if ! cmp -s "$REQS" "$stamp"; then
    echo "installing the check tools into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS"
    cp "$REQS" "$stamp"
fi
command -v systemd-analyze >/dev/null || apt_install systemd

# ---- Python checks (YAML, Kubernetes, compose invariants, Bicep, Docker context, healthcheck) ---

"$VENV/bin/python" scripts/check_deploy.py || failed=$((failed + $?))

# ---- yamllint ----------------------------------------------------------------------------------

if out=$("$VENV/bin/yamllint" -c deploy/.yamllint.yaml -f parsable deploy/ 2>&1); then
    echo "ok   yamllint deploy/"
else
    fail "yamllint deploy/:"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---- compose schema ----------------------------------------------------------------------------

if out=$("$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml 2>&1); then
    echo "ok   compose.yaml against the Compose Specification schema"
else
    fail "compose.yaml against the Compose Specification schema:"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---- Dockerfile --------------------------------------------------------------------------------

if out=$("$VENV/bin/hadolint" --no-color deploy/Dockerfile 2>&1); then
    echo "ok   hadolint deploy/Dockerfile"
else
    fail "hadolint deploy/Dockerfile:"
    printf '%s\n' "$out" | sed 's/^/       /'
fi

# ---- systemd -----------------------------------------------------------------------------------

# verify wants ExecStart= to exist: check a copy whose ExecStart points at a stand-in.
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
printf '#!/bin/sh\nexit 0\n' >"$unit_dir/twokey"
chmod +x "$unit_dir/twokey"
sed "s#/usr/local/bin/twokey#$unit_dir/twokey#g" deploy/twokey.service >"$unit_dir/twokey.service"
# verify exits 0 on unknown keys and bad values (it only warns), so any output is a failure.
out=$(systemd-analyze verify "$unit_dir/twokey.service" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
    echo "ok   systemd-analyze verify deploy/twokey.service"
else
    fail "systemd-analyze verify deploy/twokey.service (exit $rc):"
    printf '%s\n' "$out" | sed 's/^/       /'
fi
exposure=$(systemd-analyze security --offline=true "$unit_dir/twokey.service" 2>&1 |
    sed -n 's/.*Overall exposure level for twokey.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
    fail "systemd-analyze security printed no exposure level"
elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    echo "ok   systemd-analyze security deploy/twokey.service: exposure $exposure (at most $MAX_EXPOSURE)"
else
    fail "systemd-analyze security deploy/twokey.service: exposure $exposure, more than $MAX_EXPOSURE"
fi

# ---- result ------------------------------------------------------------------------------------

if [ "$failed" -ne 0 ]; then
    echo "check-deploy.sh: $failed check(s) failed" >&2
    exit 1
fi
echo "check-deploy.sh: all deploy checks passed"
