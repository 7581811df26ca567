#!/usr/bin/env bash
# The main job: install, then train the demo preset (STML on Fashion-MNIST) and print the metrics table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# --overwrite: a second run replaces the first one's runs/demo (only a directory dmlkit created is replaced)
dmlkit train --preset demo --out runs/demo --overwrite "$@"
echo
echo "Look at the neighbours (a page on this machine, works offline): dmlkit serve runs/demo"
