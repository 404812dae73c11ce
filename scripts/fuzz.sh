#!/usr/bin/env bash
# Fuzzes the decode path with libFuzzer (cargo-fuzz): frames, record blocks and CAR files.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 60)
# Seeds come from the real relay capture when ../shared/fixtures is present, and from generated
# frames. Crashes are saved under host/fuzz/artifacts/. cargo-fuzz needs nightly compiler flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
export RUSTC_BOOTSTRAP=1

corpus=target/fuzz-corpus
mkdir -p "$corpus/decode_frame" "$corpus/record_to_json" "$corpus/read_car"
cargo run --quiet --release -p atkafka-integration-tests --bin fuzz-seeds -- "$corpus"

for target in decode_frame record_to_json read_car; do
  echo "fuzzing $target for $seconds s"
  (cd host/fuzz && cargo fuzz run --sanitizer none "$target" "../../$corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 15)
done
