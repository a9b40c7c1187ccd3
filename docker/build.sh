#!/usr/bin/env bash
# Build curate's CUDA image from the repository root and tag it <registry>/curate:<git sha>.
#
#   docker/build.sh --registry 123456789012.dkr.ecr.us-west-2.amazonaws.com           # build
#   docker/build.sh --registry 123456789012.dkr.ecr.us-west-2.amazonaws.com --push    # build and push
#
# The tag is the commit the image was built from, so a run's image names its code. A tree with
# uncommitted changes (tracked or untracked, not ignored) is refused: the image would hold code no
# commit has. --allow-dirty builds it anyway as <sha>-dirty (for trying things out on a cluster; keep
# those out of production runs). Prints the image name on the last line of its output.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: docker/build.sh [--registry REGISTRY] [--push] [--allow-dirty] [--platform PLATFORM] [-- DOCKER_BUILD_ARGS...]
  --registry REGISTRY  image repository prefix (default: $CURATE_REGISTRY); the image is REGISTRY/curate:<git sha>
  --push               push the image after building (needs a registry)
  --allow-dirty        build a tree with local changes, tagged <git sha>-dirty
  --platform PLATFORM  target platform (default: linux/amd64)
  anything after --    passed to `docker build` as is (e.g. --no-cache, --build-arg RAY_VERSION=...)
USAGE
}

registry=${CURATE_REGISTRY:-}
push=false
allow_dirty=false
platform=linux/amd64
extra=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --registry=*) registry=${1#*=}; shift ;;
    --platform) platform=${2:?--platform needs a value}; shift 2 ;;
    --platform=*) platform=${1#*=}; shift ;;
    --push) push=true; shift ;;
    --allow-dirty) allow_dirty=true; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$root"

sha=$(git rev-parse HEAD)
tag=$sha
if [ -n "$(git status --porcelain)" ]; then
  if [ "$allow_dirty" != true ]; then
    echo "build.sh: the tree has uncommitted changes; commit them, or pass --allow-dirty for a <sha>-dirty image:" >&2
    git status --short >&2
    exit 1
  fi
  tag=$sha-dirty
fi

registry=${registry%/}
image=curate:$tag
if [ -n "$registry" ]; then
  image=$registry/$image
fi
if [ "$push" = true ] && [ -z "$registry" ]; then
  echo "build.sh: --push needs --registry (or CURATE_REGISTRY)" >&2
  exit 2
fi
if [ "$push" = true ] && [ "$tag" != "$sha" ]; then
  echo "build.sh: warning: pushing $image, built from uncommitted changes" >&2
fi

docker build \
  --file docker/Dockerfile \
  --platform "$platform" \
  --build-arg "GIT_SHA=$tag" \
  --tag "$image" \
  ${extra[@]+"${extra[@]}"} \
  .

if [ "$push" = true ]; then
  docker push "$image"
fi
echo "$image"
