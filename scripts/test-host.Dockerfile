# Finishes the debootstrap root file system into a systemd test host for Molecule (see build-test-host-image.sh).
ARG BASE
FROM ${BASE}
ENV container=docker
# Units that make no sense in a container (no consoles, no udev, no kernel module loading) are masked, so
# `systemctl is-system-running` reaches a clean state.
RUN systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
      getty.target console-getty.service systemd-logind.service \
 && echo 'localhost' > /etc/hostname \
 && printf 'APT::Install-Recommends "false";\n' > /etc/apt/apt.conf.d/90-no-recommends
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
