#!/usr/bin/env bash
# Fuzzes the cargo-fuzz targets in fuzz/ one after the other, SECONDS each (default 15),
# and fails at the first crash or broken property, whose input libFuzzer leaves in
# fuzz/artifacts/<target>/ (turn it into a regression test in the normal test suite).
#
#   scripts/fuzz.sh                    # the CI smoke run: ~15 s per target
#   scripts/fuzz.sh 600                # a longer run: 10 minutes per target
#   scripts/fuzz.sh 120 peer_request   # chosen targets only
#
# Each target's corpus grows in fuzz/corpus/<target>/ (not committed; keep it between
# long runs, it is where the coverage is); fuzz/seeds/<target>/ is the committed seed
# corpus (regenerate it with fuzz/examples/write_seeds.rs after a protocol change).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-15}
shift || true
# Slowest single input allowed, in seconds: a slower one is reported as a hang.
per_input_timeout=20

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only -Z flags (sanitizers). Use a nightly toolchain where
# rustup has one; a machine with only its one stable toolchain (which cannot fetch
# another) lets that one accept them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
# Every target at once (each run below then only checks that it is fresh).
cargo "${toolchain[@]}" fuzz build

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="$logs/$target.log"
    options=(-max_total_time="$seconds" -timeout="$per_input_timeout" -print_final_stats=1)
    # A target's dictionary (field names, boundary numbers) helps it past text formats.
    if [ -f "fuzz/dicts/$target.dict" ]; then
        options+=(-dict="fuzz/dicts/$target.dict")
    fi
    if ! cargo "${toolchain[@]}" fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        "${options[@]}" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    echo "fuzz: $target ok: $runs executions in ${seconds}s, corpus $corpus inputs"
done
