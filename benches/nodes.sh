#!/usr/bin/env bash
# The scale-out benchmark (docs/benchmarks.md, docs/scale-out.md): two worker
# nodes made on this machine — network namespaces joined by veth pairs, each
# running OpenSSH's sshd on its own address with its own host key — plus the
# local machine, then `agentswarm bench --nodes` over them.
#
#   sudo benches/nodes.sh [AGENTSWARM_BINARY] [-- BENCH OPTIONS]
#
# Defaults: target/release/agentswarm (built if missing), 120 tasks, 1 turn
# of 500 ms, 4 workers here and 4 on each node. Needs root, iproute2 and
# openssh-server (what .ci/run installs). Everything it makes goes at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
exe=${1:-target/release/agentswarm}
[ "${1:-}" = "--" ] && exe=target/release/agentswarm
shift $(( $# > 0 ? 1 : 0 )) || true
[ "${1:-}" = "--" ] && shift
if [ ! -x "$exe" ]; then
  cargo build --release --locked -p agentswarm
  exe=target/release/agentswarm
fi
exe=$(readlink -f "$exe")
[ "$(id -u)" = 0 ] || { echo "benches/nodes.sh needs root (network namespaces)" >&2; exit 2; }
for p in ip /usr/sbin/sshd ssh ssh-keygen; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install iproute2 openssh-server openssh-client" >&2; exit 2; }
done

work=$(mktemp -d /tmp/agentswarm-nodes-bench.XXXXXX)
chmod 711 "$work"
tag=$(printf '%04x' $((RANDOM)))
hosts=()
cleanup() {
  for i in "${!hosts[@]}"; do
    ns=asb$tag$i
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    ip link del "asbh$tag$i" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N '' -f "$work/id"
: > "$work/known_hosts"
: > "$work/agentswarm.toml"
mkdir -p /run/sshd
for i in 0 1; do
  ns=asb$tag$i; link=asbh$tag$i; peer=asbp$tag$i
  net="10.$((200 + i)).$((RANDOM % 250 + 1))"
  ip netns add "$ns"
  ip link add "$link" type veth peer name "$peer"
  ip link set "$peer" netns "$ns"
  ip addr add "$net.1/30" dev "$link"; ip link set "$link" up
  ip netns exec "$ns" ip addr add "$net.2/30" dev "$peer"
  ip netns exec "$ns" ip link set "$peer" up
  ip netns exec "$ns" ip link set lo up
  d=$work/host$i; mkdir -p "$d/work"
  ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
  cp "$work/id.pub" "$d/authorized_keys"
  cat > "$d/sshd_config" <<CONF
Port 22
ListenAddress $net.2
HostKey $d/hostkey
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
ClientAliveInterval 2
ClientAliveCountMax 3
MaxSessions 64
MaxStartups 64
CONF
  ip netns exec "$ns" /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
  hosts+=("$net.2")
  echo "$net.2 $(cut -d' ' -f1,2 "$d/hostkey.pub")" >> "$work/known_hosts"
  cat >> "$work/agentswarm.toml" <<CONF
[nodes.bench$i]
ssh = "root@$net.2"
identity_file = "$work/id"
known_hosts_file = "$work/known_hosts"
agentswarm = "$d/bin/agentswarm"
work_dir = "$d/work"
max_workers = 4
max_sessions = 64
CONF
done
for i in 0 1; do
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/${hosts[$i]}/22") 2>/dev/null && break; sleep 0.1; done
done
export HOME=$work AGENTSWARM_HOME=$work/data
( cd "$work" && "$exe" node install bench0 >/dev/null && "$exe" node install bench1 >/dev/null )
for h in "${hosts[@]}"; do
  ssh -O exit -o ControlPath="$work/data/ssh/%C" "root@$h" 2>/dev/null || true
done
"$exe" bench --nodes "$work/agentswarm.toml" --tasks 120 --turns 1 --latency-ms 500 --workers 4 "$@"
