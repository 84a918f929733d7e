#!/bin/sh
# Installs what a fresh Debian 12 machine lacks, starts dockerd if it is not running, and builds
# the local test image. Idempotent; used by `make run`, `make test`, `make bench` and CI.
set -eu

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "setup: needs root (apt-get, dockerd, BPF, netlink)" >&2
		exit 1
	fi
}

PACKAGES="clang clang-format llvm libbpf-dev bpftool docker.io docker-compose busybox-static iperf3 iproute2 iputils-ping procps util-linux systemd tcpdump chromium fonts-dejavu-core"

missing=""
for pkg in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
	need_root
	echo "setup: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
fi

# Debian's docker client; a newer client elsewhere on PATH would also work, but be exact.
DOCKER=/usr/bin/docker

if ! $DOCKER info >/dev/null 2>&1; then
	need_root
	echo "setup: starting dockerd (log: /var/log/dockerd.log)"
	setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
	i=0
	until $DOCKER info >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt 60 ]; then
			echo "setup: dockerd did not come up; last log lines:" >&2
			tail -n 30 /var/log/dockerd.log >&2
			exit 1
		fi
		sleep 0.5
	done
fi

# A local image (no registry is reachable): busybox-static as the whole root file system.
# Bump IMAGE_VERSION whenever the image's content changes, so existing machines rebuild it.
IMAGE_VERSION=2
have=$($DOCKER image inspect -f '{{index .Config.Labels "io.cilium-rs.image"}}' crs-busybox:latest 2>/dev/null || true)
if [ "$have" != "$IMAGE_VERSION" ]; then
	echo "setup: building image crs-busybox from busybox-static"
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/var/www"
	cp /bin/busybox "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
	done
	echo "cilium-rs" >"$root/var/www/index.html"
	tar -C "$root" -c . | $DOCKER import -c 'CMD ["/bin/sh"]' -c "LABEL io.cilium-rs.image=$IMAGE_VERSION" \
		- crs-busybox:latest >/dev/null
fi
