#!/usr/bin/env bash
# Builds the tray app's Debian package with the Tauri bundler (release build):
# $CARGO_TARGET_DIR/release/bundle/deb/RainMaker_<version>_amd64.deb, depending on
# libwebkit2gtk-4.1-0, libgtk-3-0 and libayatana-appindicator3-1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
./scripts/setup
# No debug line tables in the shipped app: they make the binary ten times larger.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
    ui/node_modules/.bin/tauri build --bundles deb "$@"
ls -l "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb
