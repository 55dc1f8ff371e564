#!/usr/bin/env bash
# Make the secret files compose.yaml mounts, in deploy/compose/secrets/ (kept out of git).
# Files that already exist are left alone, so running it again changes nothing.
#
#   OIDC_CLIENT_SECRET='…' deploy/compose/make-secrets.sh
#
# The OIDC client secret is yours to give (the app registration's secret); without it that file
# is not written and `docker compose up` says the secret file is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

umask 077
mkdir -p secrets
chmod 0700 secrets

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

if [ ! -e secrets/postgres-password ]; then
    random_hex 24 > secrets/postgres-password
    echo "made secrets/postgres-password"
fi
if [ ! -e secrets/database-url ]; then
    printf 'postgres://twokey:%s@postgres:5432/twokey' "$(cat secrets/postgres-password)" > secrets/database-url
    echo "made secrets/database-url"
fi
if [ ! -e secrets/review-key-1 ]; then
    # 48 random bytes as 96 hex characters (at least 32 bytes are required).
    random_hex 48 > secrets/review-key-1
    echo "made secrets/review-key-1"
fi
if [ ! -e secrets/oidc-client-secret ]; then
    if [ -n "${OIDC_CLIENT_SECRET:-}" ]; then
        printf '%s' "$OIDC_CLIENT_SECRET" > secrets/oidc-client-secret
        echo "made secrets/oidc-client-secret"
    else
        echo "secrets/oidc-client-secret not made: run again with OIDC_CLIENT_SECRET='…' set" >&2
    fi
fi

# Compose bind-mounts each file as it is, and the containers read them as their own users
# (twokey: uid 10001, postgres: uid 999), so the files must be readable by others; the
# directory (0700) keeps other users of this machine out.
chmod 0644 secrets/*
