# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# Two hosts on one machine: the server side in this network namespace, an agent in a private one,
# joined by a veth pair on 10.213.X.0/30 (X random).  Needs common.sh.
#
#   netns_pair NS_PREFIX VETH_PREFIX   sets NET, NS (NS_PREFIX-PID), VETH (VETH_PREFIX PID),
#                                      SERVER_IP and AGENT_IP; both are removed at exit
#   netns_pair_up                      creates them (a plain command: also fine under check)

netns_pair() {
	NET=$((RANDOM % 200 + 20))
	NS=$1-$$
	VETH=$2$$
	SERVER_IP=10.213.$NET.1
	AGENT_IP=10.213.$NET.2
	defer _netns_pair_down "$NS" "$VETH"
}

_netns_pair_down() {
	ip netns del "$1" 2>/dev/null || true
	ip link del "$2" 2>/dev/null || true
}

netns_pair_up() {
	ip netns add "$NS" &&
		ip link add "$VETH" type veth peer name "${VETH}a" &&
		ip link set "${VETH}a" netns "$NS" &&
		ip addr add "$SERVER_IP/30" dev "$VETH" &&
		ip link set "$VETH" up &&
		ip -n "$NS" addr add "$AGENT_IP/30" dev "${VETH}a" &&
		ip -n "$NS" link set "${VETH}a" up &&
		ip -n "$NS" link set lo up
}
