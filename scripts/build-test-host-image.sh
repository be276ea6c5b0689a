#!/usr/bin/env bash
# Builds the Molecule test host image locally: a Debian 12 (bookworm) root file system made by debootstrap
# with systemd as PID 1 and Python for Ansible, imported into Docker, then finished by a small `docker build`.
# CI machines can pull no image, so this is how Molecule gets a systemd host there. Skips the work when the
# image already exists (FORCE=1 rebuilds). Usage: build-test-host-image.sh [IMAGE_TAG]
set -euo pipefail
image="${1:-${MOLECULE_IMAGE:-moltbot-test/debian-systemd:bookworm}}"
rootfs_image="moltbot-test/debian-rootfs:bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
here="$(cd "$(dirname "$0")" && pwd)"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-test-host-image: $image already exists (FORCE=1 rebuilds)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-test-host-image: debootstrap is missing (make system-deps)" >&2; exit 1; }

workdir="$(mktemp -d /tmp/moltbot-test-host.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT
echo "build-test-host-image: debootstrap bookworm into $workdir/rootfs"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl,gnupg,kmod \
  bookworm "$workdir/rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1 \
  || { tail -n 30 "$workdir/debootstrap.log" >&2; exit 1; }
# Same suites a cloud image has, so security updates and docker.io's dependencies resolve.
cat >"$workdir/rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
rm -rf "$workdir/rootfs/var/cache/apt/archives/"*.deb
tar -C "$workdir/rootfs" -c . | docker import - "$rootfs_image" >/dev/null
DOCKER_BUILDKIT=0 docker build -q -t "$image" --build-arg "BASE=$rootfs_image" -f "$here/test-host.Dockerfile" "$here" >/dev/null
docker image rm "$rootfs_image" >/dev/null
echo "build-test-host-image: built $image"
