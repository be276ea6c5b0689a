#!/usr/bin/env bash
# Runs ON THE TEST HOST (Molecule prepare, see fake-upstream-repos.yml). Builds signed apt repositories laid out
# like Docker's, NVIDIA's and Elastic's, with stand-in packages of the names the roles install, under ROOT, so
# that the roles' upstream code paths (signing key download with a pinned checksum, deb822 source with
# Signed-By, apt update, pinned versions) really run where the real repositories can't be reached.
#   ROOT/linux/<distro>/gpg, ROOT/linux/<distro>/dists/<codename>/stable/...   Docker
#   ROOT/libnvidia-container/gpgkey, ROOT/libnvidia-container/stable/deb/<arch>/  NVIDIA (flat repository)
#   ROOT/GPG-KEY-elasticsearch, ROOT/packages/8.x/apt/dists/stable/main/...       Elastic
# The stand-ins: docker-ce is the distribution's docker.io repackaged under Docker's name (docker.io conflicts
# with docker-ce, so it can't merely depend on it); containerd.io depends on the distribution's containerd;
# NVIDIA's packages carry shell stand-ins of nvidia-ctk, nvidia-container-runtime (execs runc) and
# nvidia-container-runtime-hook (accepts every container: there is no GPU); filebeat is a Python stand-in that
# checks a configuration as `filebeat test config` does (YAML, ${VAR:default} expansion, one enabled output,
# readable CA files) and runs as the package's systemd unit does. A throwaway key (made here, never leaves the
# host except its public half) signs every Release file. Writes ROOT/key.sha256 (checksum of the public key file).
#   fake-upstream-repos.sh ROOT docker|nvidia|elastic...
set -euo pipefail
root=$1; shift
arch="$(dpkg --print-architecture)"
. /etc/os-release
distro="$ID" codename="$VERSION_CODENAME"
work="$(mktemp -d /var/tmp/fake-upstream.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
export GNUPGHOME="$work/gnupg"
mkdir -m 0700 "$GNUPGHOME"
mkdir -p "$root"

gpg --batch --quiet --pinentry-mode loopback --passphrase '' --quick-gen-key "Moltbot Molecule fake upstream <molecule@localhost>" rsa3072 sign 2d
gpg --batch --armor --export >"$work/key.asc"
sha256sum "$work/key.asc" | cut -d' ' -f1 >"$root/key.sha256"

# stand_in NAME VERSION ARCH OUT_DIR [DEPENDS] -- files come from $work/files/NAME/ when present.
stand_in() {
  local name=$1 version=$2 pkg_arch=$3 out=$4 depends=${5:-} dir="$work/pkg/$1"
  mkdir -p "$dir/DEBIAN" "$dir/usr/share/doc/$name" "$out"
  [ -d "$work/files/$name" ] && cp -a "$work/files/$name/." "$dir/"
  echo "Stand-in package made by Moltbot's Molecule scenarios (ansible/molecule/shared)." >"$dir/usr/share/doc/$name/STAND-IN"
  {
    echo "Package: $name"; echo "Version: $version"; echo "Architecture: $pkg_arch"
    echo "Maintainer: Moltbot Molecule <molecule@localhost>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Description: stand-in for $name (Molecule tests)"
  } >"$dir/DEBIAN/control"
  dpkg-deb -Zgzip -z1 --root-owner-group -b "$dir" "$out/${name}_${version#*:}_${pkg_arch}.deb" >/dev/null
}

sign_release() {  # sign_release DIR
  gpg --batch --yes --clearsign -o "$1/InRelease" "$1/Release"
  gpg --batch --yes -abs -o "$1/Release.gpg" "$1/Release"
}

apt_release() {  # apt_release DIR ORIGIN [SUITE CODENAME COMPONENTS] (a flat repository has none)
  local opts=(-o "APT::FTPArchive::Release::Origin=$2" -o "APT::FTPArchive::Release::Label=$2"
              -o "APT::FTPArchive::Release::Architectures=$arch")
  [ -n "${3:-}" ] && opts+=(-o "APT::FTPArchive::Release::Suite=$3" -o "APT::FTPArchive::Release::Codename=$4"
                            -o "APT::FTPArchive::Release::Components=$5")
  apt-ftparchive "${opts[@]}" release "$1" >"$work/Release"
  mv "$work/Release" "$1/Release"
  sign_release "$1"
}

docker_repo() {
  local base="$root/linux/$distro" pool dists
  dists="$base/dists/$codename"
  pool="$dists/pool/stable/$arch"
  mkdir -p "$pool" "$dists/stable/binary-$arch"
  cp "$work/key.asc" "$base/gpg"
  # DOCKER_IO_VERSION: the docker.io version to repackage (empty: the candidate).
  (cd "$work" && apt-get download -q "docker.io${DOCKER_IO_VERSION:+=$DOCKER_IO_VERSION}" >/dev/null)
  dpkg-deb -R "$work"/docker.io_*.deb "$work/docker-ce"
  local version
  version="5:$(sed -n 's/^Version: //p' "$work/docker-ce/DEBIAN/control")"
  sed -i -e 's/^Package: docker.io$/Package: docker-ce/' -e "s/^Version: .*/Version: $version/" \
    -e '/^\(Conflicts\|Breaks\|Replaces\|Provides\):/d' "$work/docker-ce/DEBIAN/control"
  dpkg-deb -Zgzip -z1 -b "$work/docker-ce" "$pool/docker-ce_${version#*:}_$arch.deb" >/dev/null
  stand_in docker-ce-cli "$version" all "$pool" docker-ce
  stand_in containerd.io 1.7.27-1 all "$pool" "containerd, runc"
  stand_in docker-buildx-plugin 0.23.0-1 all "$pool"
  stand_in docker-compose-plugin 2.35.1-1 all "$pool"
  (cd "$base" && apt-ftparchive packages "dists/$codename/pool/stable/$arch" >"$dists/stable/binary-$arch/Packages")
  gzip -kf "$dists/stable/binary-$arch/Packages"
  apt_release "$dists" Docker "$codename" "$codename" stable
}

nvidia_repo() {
  local version=1.17.8-1 flat="$root/libnvidia-container/stable/deb/$arch" f="$work/files"
  mkdir -p "$flat" "$f/nvidia-container-toolkit-base/usr/bin" "$f/nvidia-container-toolkit/usr/bin" \
    "$f/libnvidia-container-tools/usr/bin"
  cp "$work/key.asc" "$root/libnvidia-container/gpgkey"
  cat >"$f/nvidia-container-toolkit-base/usr/bin/nvidia-ctk" <<'SH'
#!/bin/sh
# Stand-in of nvidia-ctk: records its calls (tests read /var/log/nvidia-ctk-stand-in.log).
echo "nvidia-ctk $*" >>/var/log/nvidia-ctk-stand-in.log
case "$*" in --version|-v) echo "NVIDIA Container Toolkit CLI version 1.17.8 (stand-in)";; esac
exit 0
SH
  cat >"$f/nvidia-container-toolkit-base/usr/bin/nvidia-container-runtime" <<'SH'
#!/bin/sh
# Stand-in of nvidia-container-runtime: a runc shim, as the real one is when no GPU hook applies.
exec runc "$@"
SH
  cat >"$f/nvidia-container-toolkit/usr/bin/nvidia-container-runtime-hook" <<'SH'
#!/bin/sh
# Stand-in of the OCI prestart hook Docker runs for --gpus: there is no GPU to inject, so it accepts.
cat >/dev/null
exit 0
SH
  cat >"$f/libnvidia-container-tools/usr/bin/nvidia-container-cli" <<'SH'
#!/bin/sh
echo "nvidia-container-cli $* (stand-in: no GPU)"
SH
  chmod 0755 "$f"/*/usr/bin/*
  stand_in libnvidia-container1 "$version" all "$flat"
  stand_in libnvidia-container-tools "$version" all "$flat" "libnvidia-container1 (= $version)"
  stand_in nvidia-container-toolkit-base "$version" all "$flat"
  stand_in nvidia-container-toolkit "$version" all "$flat" \
    "nvidia-container-toolkit-base (= $version), libnvidia-container-tools (= $version)"
  (cd "$flat" && apt-ftparchive packages . >Packages && gzip -kf Packages)
  apt_release "$flat" "https://nvidia.github.io/libnvidia-container/stable/deb/$arch"
}

elastic_repo() {
  local version=8.17.4 base="$root/packages/8.x/apt" f="$work/files/filebeat"
  mkdir -p "$base/pool/main/f/filebeat" "$base/dists/stable/main/binary-$arch" "$f/usr/share/filebeat/bin" \
    "$f/usr/bin" "$f/lib/systemd/system" "$f/etc/filebeat"
  cp "$work/key.asc" "$root/GPG-KEY-elasticsearch"
  cat >"$f/usr/share/filebeat/bin/filebeat" <<'PY'
#!/usr/bin/python3
"""Stand-in of Filebeat 8 for Molecule: `test config` checks what Filebeat's own check rejects (unparsable YAML,
unset ${VAR} without default, no or several enabled outputs, inputs without paths, unreadable CA files);
without `test` it does the same check and then idles like the service (no shipping)."""
import os, re, sys, time
import yaml

def expand(value):
    def sub(m):
        name, _, default = m.group(1).partition(":")
        if name in os.environ:
            return os.environ[name]
        if ":" in m.group(1):
            return default
        raise SystemExit(f"Exiting: error loading config file: missing field accessing '{name}'")
    if isinstance(value, str):
        return re.sub(r"\$\{([^}]+)\}", sub, value)
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value

def truthy(value):
    return str(value).lower() in ("true", "1", "yes", "on") if not isinstance(value, bool) else value

def check(path):
    try:
        with open(path) as handle:
            config = expand(yaml.safe_load(handle))
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"Exiting: error loading config file: {exc}")
    inputs = config.get("filebeat.inputs") or []
    if not inputs or any(not i.get("paths") for i in inputs if i.get("type") in ("filestream", "log")):
        raise SystemExit("Exiting: no inputs with paths")
    outputs = {k: v for k, v in config.items() if k.startswith("output.") and truthy((v or {}).get("enabled", True))}
    if len(outputs) != 1:
        raise SystemExit(f"Exiting: error initializing publisher: exactly one output must be enabled, got {sorted(outputs)}")
    output = next(iter(outputs.values()))
    for ca in output.get("ssl.certificate_authorities") or []:
        if not os.access(ca, os.R_OK):
            raise SystemExit(f"Exiting: error initializing publisher: open {ca}: no such file or directory")
    return config

args = sys.argv[1:]
config_path = args[args.index("-c") + 1] if "-c" in args else "/etc/filebeat/filebeat.yml"
check(config_path)
if args[:2] == ["test", "config"]:
    print("Config OK")
    sys.exit(0)
if args[:1] == ["version"]:
    print("filebeat version 8.17.4 (stand-in)")
    sys.exit(0)
print("filebeat stand-in: configuration checked, running (nothing is shipped)", flush=True)
while True:
    time.sleep(3600)
PY
  chmod 0755 "$f/usr/share/filebeat/bin/filebeat"
  ln -s ../share/filebeat/bin/filebeat "$f/usr/bin/filebeat"
  # The unit of Elastic's package, its ExecStart arguments unchanged.
  cat >"$f/lib/systemd/system/filebeat.service" <<'UNIT'
[Unit]
Description=Filebeat sends log files to Logstash or directly to Elasticsearch.
Documentation=https://www.elastic.co/beats/filebeat
Wants=network-online.target
After=network-online.target

[Service]
UMask=0027
Environment="BEAT_LOG_OPTS="
Environment="BEAT_CONFIG_OPTS=-c /etc/filebeat/filebeat.yml"
Environment="BEAT_PATH_OPTS=--path.home /usr/share/filebeat --path.config /etc/filebeat --path.data /var/lib/filebeat --path.logs /var/log/filebeat"
EnvironmentFile=-/etc/default/filebeat
ExecStart=/usr/share/filebeat/bin/filebeat --environment systemd $BEAT_LOG_OPTS $BEAT_CONFIG_OPTS $BEAT_PATH_OPTS
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
  stand_in filebeat "$version" all "$base/pool/main/f/filebeat" python3-yaml
  (cd "$base" && apt-ftparchive packages pool/main >"dists/stable/main/binary-$arch/Packages")
  gzip -kf "$base/dists/stable/main/binary-$arch/Packages"
  apt_release "$base/dists/stable" Elastic stable stable main
}

for repo in "$@"; do
  case "$repo" in
    docker) docker_repo ;;
    nvidia) nvidia_repo ;;
    elastic) elastic_repo ;;
    *) echo "fake-upstream-repos: unknown repository $repo" >&2; exit 2 ;;
  esac
done
echo "fake-upstream-repos: built $* under $root"
