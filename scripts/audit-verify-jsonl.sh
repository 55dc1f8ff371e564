#!/usr/bin/env bash
# Verify a twokey JSON Lines audit export with standard tools only (jq, sha256sum, paste), the
# way the README's "Audit" section describes, without twokey:
#
#   scripts/audit-verify-jsonl.sh export.jsonl
#
# For each event: hash = sha256(prev_hash ‖ canonical JSON), where the canonical JSON is the
# event without prev_hash and hash, keys sorted at every depth, compact (jq -cS). Where two
# events are adjacent (seq n, n+1) the second's prev_hash must be the first's hash.
# Exit 0: whole (from seq 1, no gap); 3: partial (gaps, e.g. a filtered export); 1: broken.
# One sha256sum per event: fine for spot checks, slow for millions (use `twokey audit verify`).
set -euo pipefail

file=${1:?usage: audit-verify-jsonl.sh EXPORT.jsonl}
genesis=$(printf '0%.0s' $(seq 1 64))
last_seq=0 last_hash=$genesis count=0 gaps=0

while IFS=$'\t' read -r seq prev hash canon; do
    got=$(printf '%s%s' "$prev" "$canon" | sha256sum | cut -d' ' -f1)
    if [ "$got" != "$hash" ]; then
        echo "seq $seq: edited (its hash does not match its content)"
        exit 1
    fi
    if [ "$seq" -le "$last_seq" ]; then
        echo "seq $seq: reordered (it comes after seq $last_seq)"
        exit 1
    elif [ "$seq" -eq $((last_seq + 1)) ]; then
        if [ "$prev" != "$last_hash" ]; then
            echo "seq $seq: prev_hash does not match the hash of seq $last_seq"
            exit 1
        fi
    else
        echo "note: seq $((last_seq + 1))-$((seq - 1)) not in this file"
        gaps=$((gaps + 1))
    fi
    last_seq=$seq last_hash=$hash count=$((count + 1))
done < <(paste -d '\t' \
    <(jq -r '"\(.seq)\t\(.prev_hash)\t\(.hash)"' "$file") \
    <(jq -cS 'del(.prev_hash, .hash)' "$file"))

if [ "$gaps" -eq 0 ]; then
    echo "OK: whole chain, $count events, up to seq $last_seq"
else
    echo "OK but PARTIAL: $count events, $gaps gap(s)"
    exit 3
fi
