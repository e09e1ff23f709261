#!/usr/bin/env bash
# Several "hosts" on one Linux machine: network namespaces joined by veth pairs to a private bridge, so a
# scheduler and workers can run as if on separate machines (own IP address, own loopback, own ports).
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2. Nothing leaves the machine: the bridge has no
# uplink; this namespace gets the bridge's address, so a client here reaches every host.
#
#   fake-hosts.sh up   NAME COUNT [SUBNET]   # NAME-1..NAME-COUNT at SUBNET.2.., this namespace at SUBNET.1
#   fake-hosts.sh down NAME COUNT            # remove them (also after a failed `up`)
#
# SUBNET is the first three octets of a private /24 (default 10.213.7). Then, for example:
#   ip netns exec NAME-1 dask scheduler --host SUBNET.2 --preload training.dashboard
#   ip netns exec NAME-2 dask worker tcp://SUBNET.2:8786 --host SUBNET.3 --nthreads 1 --resources training_slot=1
#   dask-train sweep pets-quick --address tcp://SUBNET.2:8786
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # where iproute2 lives, even for a non-login root shell

usage() { echo "usage: $0 up|down NAME COUNT [SUBNET]" >&2; exit 2; }
[ $# -ge 3 ] || usage
action=$1 name=$2 count=$3 subnet=${4:-10.213.7}
[[ $name =~ ^[a-z][a-z0-9]{0,7}$ ]] || { echo "NAME must be 1-8 lowercase letters/digits (interface names are short): $name" >&2; exit 2; }
[[ $count =~ ^[1-9][0-9]?$ ]] || { echo "COUNT must be 1-99: $count" >&2; exit 2; }
[[ $subnet =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "SUBNET must look like 10.213.7: $subnet" >&2; exit 2; }
bridge="$name-br"

down() {
    for i in $(seq 1 "$count"); do
        ip netns del "$name-$i" 2>/dev/null || true
        ip link del "$name-h$i" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
}

up() {
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    for i in $(seq 1 "$count"); do
        ip netns add "$name-$i"
        ip link add "$name-h$i" type veth peer name eth0 netns "$name-$i"
        ip link set "$name-h$i" master "$bridge" up
        ip -n "$name-$i" addr add "$subnet.$((i + 1))/24" dev eth0
        ip -n "$name-$i" link set eth0 up
        ip -n "$name-$i" link set lo up
        ip -n "$name-$i" route add default via "$subnet.1"
        echo "$name-$i $subnet.$((i + 1))"
    done
}

case $action in
    up) trap 'down' ERR; up ;;
    down) down ;;
    *) usage ;;
esac
