#!/usr/bin/env bash
# Builds the example formatter of guest-formatters/examples in Rust, JavaScript and Python into
#   target/examples/posts-rust.wasm
#   target/examples/posts-js.wasm
#   target/examples/posts-python.wasm
# The JavaScript and Python toolchains come from `scripts/install-deps.sh examples`, which
# `make examples` runs first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo=${CARGO:-cargo}
examples=guest-formatters/examples
out=target/examples
mkdir -p "$out"

echo "building $out/posts-rust.wasm"
"$cargo" build --profile guest --target wasm32-wasip2 -p atkafka-example-posts
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/guest/atkafka_example_posts.wasm" "$out/posts-rust.wasm"

# Every optional StarlingMonkey feature is disabled (console output, random, clocks, fetch and the
# fetch event), so that the component imports only what its JavaScript needs: no WASI at all.
echo "building $out/posts-js.wasm"
"$examples/js/node_modules/.bin/componentize-js" "$examples/js/posts.js" \
  --wit wit --world-name formatter \
  --disable stdio random clocks http fetch-event \
  --out "$out/posts-js.wasm"

# componentize-py writes __pycache__ beside the module it loads, so it loads a copy under target/
# and the source folder stays clean. --stub-wasi replaces every WASI import with a trapping stub.
echo "building $out/posts-python.wasm"
python_app="$out/python-app"
rm -rf "$python_app"
mkdir -p "$python_app"
cp "$examples/python/posts.py" "$python_app/"
"$out/venv/bin/componentize-py" --wit-path wit --world formatter \
  componentize --stub-wasi --python-path "$python_app" --output "$out/posts-python.wasm" posts

ls -l "$out"/posts-*.wasm
