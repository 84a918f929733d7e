#!/bin/sh
# Builds the managed (v2) Docker plugin from a cilium-rs binary: a root file system holding the
# binary and the shared libraries it links (copied from this host; no registry is needed), with
# plugin-spec/config.json beside it, then `docker plugin create`. A plugin of the same name is
# disabled and removed first. The new plugin is left disabled: `docker plugin set` works only
# then; `docker plugin enable NAME` starts it.
#
#   scripts/plugin.sh [BINARY]      (default target/release/cilium-rs)
#
# Environment: PLUGIN (default cilium-rs:latest), PLUGIN_DIR (default target/plugin),
# FORCE=1 to replace a plugin that networks still use (their state is kept: it lives on the
# host, in the plugin's state mount).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/cilium-rs}
case $BIN in
/*) ;;
*) BIN=$PWD/$BIN ;;
esac
cd "$ROOT"
PLUGIN=${PLUGIN:-cilium-rs:latest}
DIR=${PLUGIN_DIR:-target/plugin}
DOCKER=/usr/bin/docker

if [ ! -x "$BIN" ]; then
	echo "plugin: $BIN missing: build it first (cargo build --release -p cilium-rs)" >&2
	exit 1
fi

# The root file system: the binary, its libraries, and the directories the mounts land on.
rm -rf "$DIR"
ROOTFS=$DIR/rootfs
mkdir -p "$ROOTFS/usr/bin" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/etc" \
	"$ROOTFS/run/docker/plugins" "$ROOTFS/run/cilium-rs" "$ROOTFS/var/lib/cilium-rs" "$ROOTFS/var/run"
mkdir -m 1777 "$ROOTFS/tmp"
# Debug sections only make a copy bigger: panics still name their place without them.
if command -v objcopy >/dev/null 2>&1; then
	objcopy --strip-debug "$BIN" "$ROOTFS/usr/bin/cilium-rs"
else
	cp "$BIN" "$ROOTFS/usr/bin/cilium-rs"
fi
# `ldd` names every library by absolute path (and fails for a static binary: nothing to copy).
libs=$(ldd "$BIN" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }') || libs=""
for lib in $libs; do
	mkdir -p "$ROOTFS$(dirname "$lib")"
	cp -L "$lib" "$ROOTFS$lib"
done
cp plugin-spec/config.json "$DIR/config.json"

force=""
if [ "${FORCE:-0}" = 1 ]; then
	force="-f"
fi
in_use() {
	echo "plugin: $PLUGIN is in use: remove its networks first, or run again with FORCE=1" >&2
	exit 1
}
if $DOCKER plugin inspect "$PLUGIN" >/dev/null 2>&1; then
	if [ "$($DOCKER plugin inspect -f '{{.Enabled}}' "$PLUGIN")" = true ]; then
		$DOCKER plugin disable $force "$PLUGIN" >/dev/null || in_use
	fi
	$DOCKER plugin rm $force "$PLUGIN" >/dev/null || in_use
fi
$DOCKER plugin create "$PLUGIN" "$DIR" >/dev/null

# The driver name networks will carry is the plugin's full name with its tag.
name=$($DOCKER plugin inspect -f '{{.Name}}' "$PLUGIN")
if [ "$name" != "cilium-rs:latest" ]; then
	$DOCKER plugin set "$name" CILIUM_RS_DRIVER_NAME="$name"
fi
echo "plugin: created $name (disabled); start it with: docker plugin enable $name"
# The bind mounts' sources must exist when it is enabled (make plugin makes the default ones,
# and contrib/tmpfiles.d/cilium-rs.conf again at boot).
for source in /var/lib/cilium-rs /run/cilium-rs; do
	[ -d "$source" ] || echo "plugin: make $source first, or move its mount with docker plugin set" >&2
done
