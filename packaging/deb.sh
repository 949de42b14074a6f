#!/usr/bin/env bash
# Builds a Debian package of the RainMaker agent for servers:
#   packaging/deb.sh            -> $CARGO_TARGET_DIR/debian/rainmaker_<version>_<arch>.deb
# It holds /usr/bin/rainmaker and the systemd unit (runs `rainmaker run` as the user
# `rainmaker` with /etc/rainmaker/rainmaker.toml). Installing creates that user and a
# commented configuration file; edit it, then `systemctl enable --now rainmaker`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rainmaker-target}"
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }

cargo build --release --locked
bin="$CARGO_TARGET_DIR/release/rainmaker"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out="$CARGO_TARGET_DIR/debian"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -Dm755 "$bin" "$stage/usr/bin/rainmaker"
strip "$stage/usr/bin/rainmaker" 2>/dev/null || true
mkdir -p "$stage/lib/systemd/system" "$stage/DEBIAN"
"$bin" --config /etc/rainmaker/rainmaker.toml service unit --user rainmaker --exe /usr/bin/rainmaker \
    > "$stage/lib/systemd/system/rainmaker.service"
install -Dm644 README.md "$stage/usr/share/doc/rainmaker/README.md"

cat > "$stage/DEBIAN/control" <<CONTROL
Package: rainmaker
Version: $version
Architecture: $arch
Maintainer: RainMaker <rainmaker@localhost>
Depends: libc6
Section: net
Priority: optional
Description: keeps backup servers a hot mirror of a trading PC
 The RainMaker agent receives mirrors of a trading platform's folders over
 TLS-encrypted WebSockets (and can push them on), so a failover server is
 ready to trade the moment it is needed.
CONTROL

cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent passwd rainmaker >/dev/null || adduser --system --group --home /var/lib/rainmaker rainmaker
    mkdir -p /etc/rainmaker
    [ -e /etc/rainmaker/rainmaker.toml ] || /usr/bin/rainmaker --config /etc/rainmaker/rainmaker.toml init >/dev/null
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
    echo "RainMaker: edit /etc/rainmaker/rainmaker.toml, then: systemctl enable --now rainmaker"
fi
POSTINST
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl disable --now rainmaker.service >/dev/null 2>&1 || true
fi
PRERM
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm"

mkdir -p "$out"
deb="$out/rainmaker_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
