#!/usr/bin/env bash
# scripts/check-logs.sh: after the test suite, search every log it wrote for secrets.
#
#   scripts/check-logs.sh [DIR]        (default target/tmp/test-logs)
#   scripts/check-logs.sh --self-test  (proves the search finds what it looks for)
#
# The API tests log at trace level (twokey's own targets, HTTP, SQL, mail, OIDC, HTTP clients)
# into DIR, and every `twokey serve` process they start copies its log there too. This fails
# when any line holds one of the suite's secrets (tests/log-secrets.txt: client secrets, signing
# keys, hook secrets, webhook URL tokens), or anything shaped like a signed token, a session
# cookie, a bearer credential or the text of a mail. It also fails when the logs are too small
# to have seen the suite, so an empty directory cannot pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly SECRETS=tests/log-secrets.txt
# Shapes, as extended regular expressions (grep -E).
readonly SHAPES=(
    'eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.'        # a JWT (review links, ID and bearer tokens)
    'twokey_session=[A-Za-z0-9_%-]{8,}'                   # a session cookie value
    '[Bb]earer [A-Za-z0-9._~+/=-]{16,}'                   # a bearer credential
    'What this does: |Request details: http'              # the text part of a mail
)

search() {
    local dir=$1 found=0 pattern
    while IFS= read -r pattern; do
        [ -z "$pattern" ] || [ "${pattern:0:1}" = "#" ] && continue
        if grep -rIlF -- "$pattern" "$dir" >/dev/null 2>&1; then
            # Name the file and line, never the secret itself.
            grep -rInF -- "$pattern" "$dir" | cut -d: -f1,2 | head -3 |
                sed "s|^|check-logs: a secret from $SECRETS (line: ${pattern:0:4}…) in |" >&2
            found=1
        fi
    done <"$SECRETS"
    for pattern in "${SHAPES[@]}"; do
        if grep -rIlE -- "$pattern" "$dir" >/dev/null 2>&1; then
            grep -rInE -- "$pattern" "$dir" | cut -d: -f1,2 | head -3 |
                sed "s|^|check-logs: something shaped like /${pattern:0:20}…/ in |" >&2
            found=1
        fi
    done
    return "$found"
}

if [ "${1:-}" = "--self-test" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo '{"level":"INFO","message":"nothing to see"}' >"$tmp/clean.log"
    search "$tmp" 2>/dev/null || { echo "check-logs self-test: a clean log was refused" >&2; exit 1; }
    while IFS= read -r secret; do
        [ -z "$secret" ] || [ "${secret:0:1}" = "#" ] && continue
        printf '{"message":"oops %s"}\n' "$secret" >"$tmp/leak.log"
        if search "$tmp" 2>/dev/null; then
            echo "check-logs self-test: a planted secret was not found" >&2
            exit 1
        fi
    done <"$SECRETS"
    for leak in 'token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.sig' 'cookie: twokey_session=AbCdEf0123456789' \
        'authorization: Bearer abcdefghijklmnop0123' 'What this does: stops backups'; do
        printf '{"message":"%s"}\n' "$leak" >"$tmp/leak.log"
        if search "$tmp" 2>/dev/null; then
            echo "check-logs self-test: a planted ${leak:0:12}… was not found" >&2
            exit 1
        fi
    done
    echo "check-logs self-test: ok"
    exit 0
fi

dir=${1:-target/tmp/test-logs}
[ -d "$dir" ] || { echo "check-logs: no logs in $dir (did the tests run?)" >&2; exit 1; }
lines=$(cat "$dir"/*.log 2>/dev/null | wc -l)
files=$(find "$dir" -name '*.log' | wc -l)
# The API suite writes well over 100,000 lines at trace level; a few thousand means it did not run.
if [ "$lines" -lt 20000 ]; then
    echo "check-logs: only $lines log lines in $dir: too few to have seen the suite" >&2
    exit 1
fi
if ! search "$dir"; then
    echo "check-logs: secrets found in the test logs (see above)" >&2
    exit 1
fi
echo "check-logs: $lines lines in $files files, no secret, token, cookie or mail text"
