#!/usr/bin/env bash
# Builds a Molecule test host image locally: a root file system made by debootstrap with systemd as PID 1 and
# Python for Ansible, imported into Docker, then finished by a small `docker build`. CI machines can pull no
# image, so this is how Molecule gets a systemd host there. Skips the work when the image already exists
# (FORCE=1 rebuilds). Usage: build-test-host-image.sh [IMAGE_TAG]
#   moltbot-test/ubuntu-systemd:jammy    Ubuntu 22.04 from Ubuntu's archive (UBUNTU_MIRROR), the default of
#                                        `make molecule`: the release the roles are written for
#   moltbot-test/debian-systemd:bookworm Debian 12 from Debian's archive (DEBIAN_MIRROR), for machines that
#                                        reach Debian's archive only
# Ubuntu's keyring is not in Debian: it comes from Ubuntu's archive as the ubuntu-keyring package, checked
# against a pinned SHA-256 before debootstrap trusts it.
set -euo pipefail
image="${1:-${MOLECULE_IMAGE:-moltbot-test/ubuntu-systemd:jammy}}"
here="$(cd "$(dirname "$0")" && pwd)"
packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl,gnupg,kmod

case "$image" in
  *:jammy)
    suite=jammy
    mirror="${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
    security="${UBUNTU_SECURITY_MIRROR:-http://security.ubuntu.com/ubuntu}"
    keyring_deb=pool/main/u/ubuntu-keyring/ubuntu-keyring_2021.03.26_all.deb
    keyring_sha256=0d0e7ed6b112f5d03eabf3c7eb01ebdacf9c57714b279e90495cfc58c8c4520f
    # Same suites and components a cloud image has (docker.io, node exporter and python3-docker are in universe).
    sources="deb $mirror jammy main universe
deb $mirror jammy-updates main universe
deb $security jammy-security main universe"
    ;;
  *:bookworm)
    suite=bookworm
    mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    sources="deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main"
    ;;
  *) echo "build-test-host-image: the tag must end in :jammy or :bookworm (got $image)" >&2; exit 2 ;;
esac
rootfs_image="moltbot-test/rootfs:$suite"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build-test-host-image: $image already exists (FORCE=1 rebuilds)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-test-host-image: debootstrap is missing (make system-deps)" >&2; exit 1; }

workdir="$(mktemp -d /tmp/moltbot-test-host.XXXXXX)"
trap 'rm -rf "$workdir"' EXIT
keyring_args=()
if [ "$suite" = jammy ]; then
  curl -fsS --max-time 120 -o "$workdir/ubuntu-keyring.deb" "$mirror/$keyring_deb" \
    || { echo "build-test-host-image: Ubuntu's archive ($mirror) can't be reached; build moltbot-test/debian-systemd:bookworm instead" >&2; exit 1; }
  echo "$keyring_sha256  $workdir/ubuntu-keyring.deb" | sha256sum -c --quiet \
    || { echo "build-test-host-image: ubuntu-keyring.deb does not match its pinned SHA-256" >&2; exit 1; }
  dpkg-deb -x "$workdir/ubuntu-keyring.deb" "$workdir/keyring"
  keyring_args=(--keyring="$workdir/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg")
fi
echo "build-test-host-image: debootstrap $suite into $workdir/rootfs"
debootstrap --variant=minbase "${keyring_args[@]}" --include="$packages" \
  "$suite" "$workdir/rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1 \
  || { tail -n 30 "$workdir/debootstrap.log" >&2; exit 1; }
printf '%s\n' "$sources" >"$workdir/rootfs/etc/apt/sources.list"
# No package lists, as in cloud and Docker images: the first apt task must update them (debootstrap's lists
# cover only the suite's main component, and look fresh to cache_valid_time).
rm -rf "$workdir/rootfs/var/cache/apt/archives/"*.deb "$workdir/rootfs/var/lib/apt/lists/"*_*
tar -C "$workdir/rootfs" -c . | docker import - "$rootfs_image" >/dev/null
DOCKER_BUILDKIT=0 docker build -q -t "$image" --build-arg "BASE=$rootfs_image" -f "$here/test-host.Dockerfile" "$here" >/dev/null
docker image rm "$rootfs_image" >/dev/null
echo "build-test-host-image: built $image"
