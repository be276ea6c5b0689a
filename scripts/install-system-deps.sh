#!/usr/bin/env bash
# Installs the Debian packages the test suite uses (a Docker engine, debootstrap for local base
# images, Prometheus with promtool, node exporter, Alertmanager with amtool, Chromium for the chat page's
# browser tests) when they are missing,
# then makes sure a Docker engine answers. Needs root or passwordless sudo.
set -euo pipefail
packages=(docker.io debootstrap prometheus prometheus-node-exporter prometheus-alertmanager iproute2 procps curl
          chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-system-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  # The packaged services must not start on install (no systemd here; tests start their own).
  echo 'exit 101' | $sudo tee /usr/sbin/policy-rc.d >/dev/null; $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  $sudo rm -f /usr/sbin/policy-rc.d
fi
exec "$(dirname "$0")/ensure-docker.sh"
