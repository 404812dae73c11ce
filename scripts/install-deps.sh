#!/usr/bin/env bash
# Installs what building and testing atkafka-host needs, skipping whatever is already there.
#   wasm-target   the Rust wasm32-wasip2 target, for the formatter guests
#   tansu         the Tansu Kafka-protocol broker (in-memory storage), for tests and `make run`;
#                 building it takes 12 to 20 minutes the first time
set -euo pipefail

TANSU_VERSION=0.6.0

for component in "$@"; do
  case "$component" in
    wasm-target)
      if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "installing the Rust target wasm32-wasip2"
        rustup target add wasm32-wasip2
      fi
      ;;
    tansu)
      if ! command -v tansu >/dev/null 2>&1 || ! tansu --version | grep -q "$TANSU_VERSION"; then
        echo "building the Tansu broker $TANSU_VERSION (12 to 20 minutes, once)"
        cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
      fi
      ;;
    *)
      echo "unknown component: $component (use wasm-target or tansu)" >&2
      exit 2
      ;;
  esac
done
