#!/usr/bin/env bash
# Builds RainMaker's Windows release on Linux, in one command:
#   packaging/windows.sh
#   -> $RAINMAKER_WINDOWS_TARGET_DIR/windows/rainmaker.exe                  the agent, stripped
#      $RAINMAKER_WINDOWS_TARGET_DIR/windows/RainMaker-<version>-setup.exe  the trading PC's installer
# (the target folder defaults to ~/.cache/rainmaker-target-win). The installer holds the tray
# app and the `rainmaker` command (packaging/windows/rainmaker.nsi). Set
# RAINMAKER_WEBVIEW2_BOOTSTRAPPER to Microsoft's MicrosoftEdgeWebview2Setup.exe to bundle it;
# without it the installer points to Microsoft's download page when WebView2 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/windows-build
source scripts/wine/env.sh
# The dashboard the tray app embeds (ui/dist).
./scripts/setup

# What `tauri build` does for a release: serve the embedded dashboard (custom-protocol).
CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false \
  "$WINDOWS_CARGO" build -Zbuild-std=std,panic_abort --target "$WINDOWS_TARGET" --release --locked \
  -p rainmaker-tray --features tauri/custom-protocol

release="$CARGO_TARGET_DIR/$WINDOWS_TARGET/release"
out="$CARGO_TARGET_DIR/windows"
mkdir -p "$out"
cp "$release/rainmaker.exe" "$out/rainmaker.exe"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
installer="$out/RainMaker-$version-setup.exe"
defines=(-DVERSION="$version" -DTRAY_EXE="$release/rainmaker-tray.exe" -DAGENT_EXE="$release/rainmaker.exe"
  -DICON="$PWD/icons/icon.ico" -DOUTFILE="$installer")
if [ -n "${RAINMAKER_WEBVIEW2_BOOTSTRAPPER:-}" ]; then
  defines+=(-DWEBVIEW2_BOOTSTRAPPER="$RAINMAKER_WEBVIEW2_BOOTSTRAPPER")
fi
makensis -V2 -INPUTCHARSET UTF8 "${defines[@]}" packaging/windows/rainmaker.nsi
ls -l "$out/rainmaker.exe" "$installer"
# The installer installs, runs and uninstalls under Wine (silently; its pages need a display).
packaging/windows/check-installer.sh "$installer"
