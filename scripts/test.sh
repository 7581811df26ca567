#!/usr/bin/env bash
# Install, then run the whole test suite (CPU only, no network at test time).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m pytest -q -p no:cacheprovider "$@"
