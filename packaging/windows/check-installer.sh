#!/usr/bin/env bash
# Installs RainMaker's Windows installer silently under Wine (the test prefix of
# scripts/windows-setup), checks what it installed, runs the installed `rainmaker.exe`,
# uninstalls and checks nothing is left but the user's data. It cannot show the installer's
# pages or WebView2 (Wine has none); see README, Platforms.
#   packaging/windows/check-installer.sh RainMaker-<version>-setup.exe
set -euo pipefail
cd "$(dirname "$0")/../.."
installer=$(realpath "$1")
# A fresh Wine prefix of its own, as a PC that never had RainMaker.
WINEPREFIX=$(mktemp -d "${TMPDIR:-/tmp}/rainmaker-installer-wine.XXXXXX")
export WINEPREFIX
trap '/usr/lib/wine/wineserver -k 2>/dev/null || true; rm -rf "$WINEPREFIX"' EXIT
scripts/windows-setup >/dev/null
source scripts/wine/env.sh
run=scripts/wine/run
fail() { echo "check-installer: $*" >&2; exit 1; }
/usr/lib/wine/wineserver -p

user=$("$run" cmd /c 'echo %USERNAME%' | tr -d '\r')
programs="$WINEPREFIX/drive_c/users/$user/AppData/Local/Programs/RainMaker"
menu="$WINEPREFIX/drive_c/users/$user/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/RainMaker"
reg() { "$run" reg query "$@" 2>/dev/null | tr -d '\r'; }

"$run" "$installer" /S
for f in rainmaker-tray.exe rainmaker.exe uninstall.exe; do
  [ -f "$programs/$f" ] || fail "the installer did not install $f"
done
[ -f "$menu/RainMaker.lnk" ] || fail "no Start-menu entry"
reg 'HKCU\Software\Microsoft\Windows\CurrentVersion\Run' | grep -q 'rainmaker-tray.exe' ||
  fail "start at login was not set up"
reg 'HKCU\Environment' /v Path | grep -qi 'Programs\\RainMaker' || fail "the rainmaker command is not on PATH"
reg 'HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\RainMaker' | grep -q DisplayName ||
  fail "no uninstall entry"
version=$("$run" "$programs/rainmaker.exe" --version | tr -d '\r')
echo "check-installer: installed; $version"

# `_?=` makes the uninstaller run in place and wait (it cannot then delete itself).
"$run" "$programs/uninstall.exe" /S "_?=C:\\users\\$user\\AppData\\Local\\Programs\\RainMaker"
for f in rainmaker-tray.exe rainmaker.exe; do
  [ ! -e "$programs/$f" ] || fail "the uninstaller left $f"
done
[ ! -e "$menu" ] || fail "the uninstaller left the Start-menu entry"
! reg 'HKCU\Software\Microsoft\Windows\CurrentVersion\Run' | grep -q 'rainmaker-tray.exe' ||
  fail "the uninstaller left start at login"
! reg 'HKCU\Environment' /v Path | grep -qi 'Programs\\RainMaker' || fail "the uninstaller left PATH"
rm -f "$programs/uninstall.exe"
rmdir "$programs" 2>/dev/null || true
echo "check-installer: uninstalled cleanly"
