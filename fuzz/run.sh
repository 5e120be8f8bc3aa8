#!/usr/bin/env bash
# Run one fuzz target for a given time:  fuzz/run.sh TARGET SECONDS [extra libFuzzer flags]
# Targets: gguf_parse model_load dequantize matmul quantize. Needs a nightly toolchain and
# cargo-fuzz (cargo install cargo-fuzz). Seeds (fuzz/corpus/TARGET, from fuzz/make_seeds.py)
# are read-only; what the fuzzer finds goes to fuzz/target/corpus-TARGET, crashes to
# fuzz/artifacts/TARGET. The last line printed is libFuzzer's "Done N runs in S second(s)".
set -euo pipefail
cd "$(dirname "$0")"
target=$1 seconds=$2
shift 2
mkdir -p "target/corpus-$target"
cargo +nightly fuzz run "$target" "target/corpus-$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$@"
