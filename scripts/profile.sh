#!/bin/sh
# Where the time of container-to-container traffic goes (docs/performance.md): a daemon of its
# own (driver crs-prof), two containers on one network, iperf3 between them; then the endpoint
# programs' run counts and run time (kernel.bpf_stats_enabled) and, with PERF=1, a system-wide
# `perf record` of the same run. Usage: scripts/profile.sh [ipv4|ipv6] [seconds]
set -eu
family=${1:-ipv4}
seconds=${2:-5}
bin=${CILIUM_RS_BIN:-./target/release/cilium-rs}
work=$(mktemp -d /tmp/crs-prof.XXXXXX)
net=crs-prof-net
image=${CRS_IMAGE:-crs-busybox}

exec 9>/run/cilium-rs-tests.lock
flock 9

cleanup() {
	[ -f "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null || true
	docker rm -f crs-prof-server crs-prof-client >/dev/null 2>&1 || true
	docker network rm "$net" >/dev/null 2>&1 || true
	[ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	rm -rf /sys/fs/bpf/crs-prof "$work"
	rm -f /run/docker/plugins/crs-prof.sock
}
trap cleanup EXIT INT TERM

"$bin" daemon --plugin-socket /run/docker/plugins/crs-prof.sock --api-socket "$work/api.sock" \
	--state-dir "$work/state" --bpf-root /sys/fs/bpf/crs-prof --egress-interface none \
	--log warn >"$work/daemon.log" 2>&1 9>&- &
daemon=$!
for _ in $(seq 50); do [ -S "$work/api.sock" ] && break; sleep 0.1; done

docker network create -d crs-prof --ipam-driver crs-prof --ipv6 "$net" >/dev/null
for role in server client; do
	docker run -d --name "crs-prof-$role" --network "$net" --label io.cilium-rs.test=1 "$image" \
		sleep 3600 >/dev/null
done
pid() { docker inspect -f '{{.State.Pid}}' "crs-prof-$1"; }
if [ "$family" = ipv6 ]; then
	server=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").GlobalIPv6Address}}" crs-prof-server)
else
	server=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" crs-prof-server)
fi
# The server must not inherit the lock (fd 9): it outlives this script until cleanup kills it.
nsenter --net=/proc/"$(pid server)"/ns/net -- taskset -c 1 iperf3 -s -D -I "$work/iperf.pid" 9>&-
sleep 0.3

stats() { bpftool -j prog show | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p.get("name", "").startswith(("crs_from_conta", "crs_to_containe")):
        print(p["id"], p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0))'; }

sysctl -qw kernel.bpf_stats_enabled=1
before=$(stats)
client="nsenter --net=/proc/$(pid client)/ns/net -- taskset -c 0 iperf3 -c $server -t $seconds -J"
if [ "${PERF:-0}" = 1 ]; then
	perf record -a -g -o "$work/perf.data" -- $client >"$work/iperf.json" 2>/dev/null
else
	$client >"$work/iperf.json"
fi
after=$(stats)
sysctl -qw kernel.bpf_stats_enabled=0

python3 - "$work/iperf.json" "$before" "$after" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
print(f"iperf3 TCP: {gbps:.2f} Gbit/s")
parse = lambda text: {l.split()[0]: l.split()[1:] for l in text.splitlines() if l.strip()}
before, after = parse(sys.argv[2]), parse(sys.argv[3])
for pid, (name, cnt, ns) in after.items():
    b = before.get(pid, [name, "0", "0"])
    runs, time = int(cnt) - int(b[1]), int(ns) - int(b[2])
    if runs:
        print(f"{name} (id {pid}): {runs} runs, {time / runs:.0f} ns per run")
EOF
if [ "${PERF:-0}" = 1 ]; then
	perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -v "^#" |
		grep "%" | head -40
fi
