#!/usr/bin/env bash
# Mutates each fuzz target given as package:FuzzName for FUZZTIME, one after
# another, and stops at the first real finding.
#
# Go 1.26's fuzz coordinator can fail a clean run with a bare "context
# deadline exceeded" just as a duration -fuzztime ends (go.dev/issue/75804,
# fixed in Go 1.27). Such a run wrote no failing input, so it is run again,
# at most twice; a run that wrote an input, or failed any other way, fails.
set -euo pipefail

: "${GO:=go}" "${FUZZTIME:=30s}" "${FUZZ_PARALLEL:=1}" "${FUZZ:=.}"

for t in "$@"; do
	[[ $t =~ $FUZZ ]] || continue
	pkg=${t%%:*} name=${t#*:}
	for try in 1 2 3; do
		echo "== $t for $FUZZTIME"
		out=$(mktemp)
		if "$GO" test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" \
			-parallel "$FUZZ_PARALLEL" 2>&1 | tee "$out"; then
			rm -f "$out"
			break
		fi
		if [[ $try -lt 3 ]] && grep -q '^    context deadline exceeded$' "$out" &&
			! grep -q 'Failing input written to' "$out" &&
			[[ $(grep -c -- '^--- FAIL' "$out") -eq 1 ]]; then
			echo "fuzz: $t hit Go's end-of-fuzztime race (go.dev/issue/75804) with no failing input; running it again" >&2
			rm -f "$out"
			continue
		fi
		rm -f "$out"
		echo "fuzz: $t failed" >&2
		exit 1
	done
done
