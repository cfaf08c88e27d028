#!/usr/bin/env bash
# Idempotent install: Debian packages that are missing, then the package into .venv.
# The venv uses Debian's /usr/bin/python3 with system site-packages, because
# Mininet's Python library comes from Debian's mininet package, matching its mnexec.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mininet bridge-utils iproute2 iptables iputils-ping ethtool kmod util-linux
  iperf3 containernetworking-plugins bird2 dnsmasq-base socat tcpdump sockperf
  nftables ipset dnsperf curl
  # first-packet (new connection) latency through NetworkPolicy chains (policy-cost)
  hping3
  # tc eBPF (calico-ipip without the ipip module) and the C forwarders
  clang llvm libbpf-dev gcc libc6-dev make
  python3 python3-venv python3-pip python3-jinja2 python3-yaml python3-dnspython
  python3-pyroute2 python3-tqdm python3-hypothesis python3-nbclient python3-nbformat
  python3-ipykernel
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "apt-get: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: mininet recommends openvswitch-switch, whose kernel
  # datapath this project does not use.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.k8stopo-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
# Our C forwarders (flannel-udp's proxy, weave-sleeve's router): k8stopo/native/*.c -> build/native/.
mkdir -p build/native
for src in k8stopo/native/*.c; do
  bin="build/native/$(basename "$src" .c | tr _ -)"
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ k8stopo/native/forwarder.h -nt "$bin" ]; then
    gcc -O2 -Wall -Wextra -o "$bin" "$src"
  fi
done
# The k8stopo command: linked to this checkout unless it already runs another one that still
# exists (a test run in a scratch clone must not take it over, then leave it dangling).
link=/usr/local/bin/k8stopo
target="$(pwd)/.venv/bin/k8stopo"
if [ ! -e "$link" ] || [ "$(readlink "$link")" = "$target" ] || [ "${K8STOPO_LINK:-}" = 1 ]; then
  ln -sfn "$target" "$link"
else
  echo "install: $link runs $(readlink -f "$link"); left as it is (K8STOPO_LINK=1 make install links this checkout)"
fi
