#!/usr/bin/env bash
# The main job: install, build the demo's glyphs (Latin letters only, ~10-30 s), then evaluate the ImageNet
# start and train STML from it without labels on 100 glyph classes, and print both on 100 unseen classes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
DEMO_DATA=$(python3 scripts/demo_data.py)
# --overwrite: a second run replaces the first one's runs/demo* (only a directory dmlkit created is replaced)
dmlkit train --method initial --dataset glyphs --data-root "$DEMO_DATA" --test-subset 2000 \
  --set backbone=efficientnet-lite0 --set pretrained=imagenet --out runs/demo-initial --overwrite --no-pictures --no-progress
dmlkit train --preset demo --data-root "$DEMO_DATA" --out runs/demo --overwrite "$@"
echo
python3 scripts/demo_compare.py runs/demo-initial runs/demo
echo
echo "Look at the neighbours (a page on this machine, works offline): dmlkit serve runs/demo"
