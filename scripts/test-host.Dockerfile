# Finishes the debootstrap root file system into a systemd test host for Molecule (see build-test-host-image.sh).
ARG BASE
FROM ${BASE}
ENV container=docker
# Units that make no sense in a container (no consoles, no udev, no kernel module loading) are masked, so
# `systemctl is-system-running` reaches a clean state. The package lists (removed by the build script) look
# old, as on a server whose lists are stale, so the roles' first apt task (cache_valid_time) fetches them.
RUN systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
      getty.target console-getty.service systemd-logind.service \
 && echo 'localhost' > /etc/hostname \
 && printf 'APT::Install-Recommends "false";\n' > /etc/apt/apt.conf.d/90-no-recommends \
 && touch -d @0 /var/lib/apt/lists
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
