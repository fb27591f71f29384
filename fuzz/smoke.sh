#!/usr/bin/env bash
# Fuzzing smoke test: builds every fuzz target and runs each one for a short,
# bounded time over its committed seeds (fuzz/seeds/<target>). Fails on any
# crash, panic, failed invariant, leak or timeout. The long campaigns are run
# by hand; see FUZZING.md.
#
#   fuzz/smoke.sh                      # 20 s per target
#   FUZZ_SMOKE_SECONDS=60 fuzz/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"

toolchain=${FUZZ_TOOLCHAIN:-nightly}
seconds=${FUZZ_SMOKE_SECONDS:-20}
targets=(cookie_secrets sql_record redis_value service)

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "== installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks, as in the long campaigns (an
# arithmetic overflow is a panic, not a silent wrap).
echo "== building the fuzz targets"
cargo "+$toolchain" fuzz build -a

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    mkdir -p "$work/$target"
    # New inputs go to the scratch directory; the committed seeds are read only.
    log="$work/$target.log"
    if ! cargo "+$toolchain" fuzz run -a "$target" "$work/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "== $target FAILED (the input is under fuzz/artifacts/$target)" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
done
echo "== fuzz smoke test passed"
