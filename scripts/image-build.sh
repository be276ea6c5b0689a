#!/usr/bin/env bash
# Builds the Moltbot container image from the root Dockerfile (`make image` calls this).
#   VARIANT=cpu|gpu        (default cpu)
#   IMAGE_TAG              the moving tag (default moltbot:latest for cpu, moltbot:gpu for gpu). The image also gets
#                          a version tag in the same repository, <repository>:<IMAGE_VERSION> (gpu: ...-gpu), which
#                          stays on it when a later build moves the moving tag: hosts roll back to it by digest.
#   IMAGE_VERSION          (default <pyproject version>-<git short revision>, -dirty for uncommitted changes)
#   BASE_IMAGE             (default debian:bookworm-slim). When a debian:<suite>-slim is neither here nor pullable
#                          (machines that reach no container registry), an equivalent base is built locally with
#                          debootstrap (scripts/build-base-image.sh, cached as local/debian:<suite>-slim) and used.
#   IMAGE_BUILD_FLAGS      extra `docker build` flags, e.g. --no-cache
#   DEFAULT_MODELS_DIR     (default build/default-models) the embedded default models, made beforehand by
#                          `moltbot models defaults --output build/default-models` (make image does); the models
#                          its manifest (defaults.json) lists are staged in build/image-defaults, which the
#                          Dockerfile copies: nothing else in that folder (other precisions) gets into the image.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${VARIANT:-cpu}"
case "$variant" in
  cpu) tag="${IMAGE_TAG:-moltbot:latest}" ;;
  gpu) tag="${IMAGE_TAG:-moltbot:gpu}" ;;
  *) echo "image-build: VARIANT must be cpu or gpu, not '$variant'" >&2; exit 2 ;;
esac
base="${BASE_IMAGE:-debian:bookworm-slim}"
models_dir="${DEFAULT_MODELS_DIR:-build/default-models}"

# Stage the manifest's models (hard links where the file system allows: no copy of the weights).
rm -rf build/image-defaults
mkdir -p build/image-defaults
if ! folders="$(python3 - "$models_dir" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
try:
    models = json.loads((root / "defaults.json").read_text())["models"]
except (OSError, ValueError, KeyError):
    sys.exit(f"{root}/defaults.json is missing or unreadable")
for name, entry in models.items():
    folder = root / entry["folder"]
    if not (folder / "model.onnx").is_file() or not (folder / "moltbot-export.json").is_file():
        sys.exit(f"{folder} ({name}) is missing or incomplete")
    print(entry["folder"])
PY
)"; then
  echo "image-build: the default models in $models_dir are not made; make them first with" >&2
  echo "  .venv/bin/moltbot models defaults --output $models_dir --builder-python build/builder-venv/bin/python" >&2
  echo "  (or run \`make image\`)" >&2
  exit 1
fi
for folder in $folders; do
  cp -al "$models_dir/$folder" build/image-defaults/ 2>/dev/null || cp -a "$models_dir/$folder" build/image-defaults/
done
cp "$models_dir/defaults.json" build/image-defaults/
echo "image-build: default models $(echo $folders) ($(du -sm build/image-defaults | cut -f1) MB)"

if docker image inspect "$base" >/dev/null 2>&1; then
  echo "image-build: base image $base (present here)"
elif timeout 300 docker pull -q "$base" >/dev/null 2>&1; then
  echo "image-build: base image $base (pulled)"
elif [[ "$base" =~ ^(docker\.io/)?(library/)?debian:([a-z]+)-slim$ ]]; then
  local_base="local/debian:${BASH_REMATCH[3]}-slim"
  echo "image-build: $base can't be pulled here (no container registry reachable);"
  echo "image-build: using an equivalent base built locally with debootstrap: $local_base"
  base="$(bash scripts/build-base-image.sh "$local_base" | tail -n 1)"
else
  echo "image-build: base image $base is neither here nor pullable" >&2
  exit 1
fi

# Extra CA certificates this host trusts (TLS-intercepting proxies between the build and PyPI); the build
# stages use them for pip, the final image never contains them.
rm -rf build/image-ca
mkdir -p build/image-ca
find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} build/image-ca/ \; 2>/dev/null || true

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- 2>/dev/null || revision="$revision-dirty"
image_version="${IMAGE_VERSION:-$version-$revision}"
# The version tag lives in the moving tag's repository (a registry host's port is not a tag).
repository="$tag"
[[ "${tag##*/}" == *:* ]] && repository="${tag%:*}"
version_tag="$repository:$image_version"
[ "$variant" = gpu ] && version_tag="$version_tag-gpu"
# The deployment contract (deploy/contract.json): service uid, ports, paths and the gpu variant's CUDA major.
mapfile -t contract_args < <(python3 - <<'PY'
import json
c = json.load(open("deploy/contract.json"))
p = c["paths"]
for name, value in [("MOLTBOT_UID", c["service_user"]["uid"]), ("MOLTBOT_GID", c["service_user"]["gid"]),
                    ("MOLTBOT_HTTP_PORT", c["ports"]["http"]), ("MOLTBOT_HTTPS_PORT", c["ports"]["https"]),
                    ("MODELS_DIR", p["models"]), ("PLUGINS_DIR", p["plugins"]), ("LOGS_DIR", p["logs"]),
                    ("DEFAULTS_DIR", p["defaults"]), ("CUDA_MAJOR", c["gpu"]["cuda_major"])]:
    print("--build-arg"); print(f"{name}={value}")
PY
)
cuda_major="$(python3 -c 'import json; print(json.load(open("deploy/contract.json"))["gpu"]["cuda_major"])')"
variant_labels=(--label io.moltbot.variant="$variant")
[ "$variant" = gpu ] && variant_labels+=(--label io.moltbot.cuda-major="$cuda_major")
echo "image-build: building $tag and $version_tag (VARIANT=$variant, BASE_IMAGE=$base)"
started=$SECONDS
# The classic builder: CI's docker.io 20.10 client has no buildx, and the Dockerfile needs no BuildKit feature.
if ! DOCKER_BUILDKIT=0 docker build --network host \
    --build-arg VARIANT="$variant" --build-arg BASE_IMAGE="$base" "${contract_args[@]}" \
    --label org.opencontainers.image.title=moltbot \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.base.name="$base" \
    --label io.moltbot.version="$image_version" \
    --label io.moltbot.revision="$revision" \
    "${variant_labels[@]}" \
    ${IMAGE_BUILD_FLAGS:-} -t "$tag" -t "$version_tag" . 2>&1 |
    sed -u -e '/^DEPRECATED: The legacy builder/d' -e '/BuildKit is currently disabled/d' \
        -e '/Install the buildx component/d' -e '/^ *environment-variable\.$/d' -e '/docs.docker.com\/go\/buildx/d' -e '/^ *$/d'; then
  echo "image-build: docker build of $tag failed" >&2
  exit 1
fi
# The image this build replaced keeps its own version tag: it is the release to roll back to, so nothing here
# removes it (`docker image prune` leaves tagged images; removing old versions is the operator's call).
size_mb="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f", $1/1e6}')"
echo "image-build: built $tag = $version_tag in $((SECONDS - started)) s, $size_mb MB"
