#!/bin/bash
# Everything CI runs: install the dependencies, then build with ASan+UBSan and run the unit and
# integration tests (make check).  Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
make -j"$(nproc)" check
