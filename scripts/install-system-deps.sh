#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the lab needs, only those that are missing.
set -euo pipefail
PACKAGES=(
  mininet iperf3 tcpdump tshark nftables ethtool iputils-ping iproute2 procps psmisc
  wireguard-tools wireguard-go openvpn mptcpd python3-venv python3-dev libssl-dev gcc make curl sudo
  iptables dnsmasq-base isc-dhcp-client
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages (${missing[*]}); run 'sudo make deps' once, then retry." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "error: apt-get not found; install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
