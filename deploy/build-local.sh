#!/usr/bin/env bash
# Builds the CPU image (deploy/Dockerfile's runtime stage) on a machine that reaches Debian's
# package archive but no container registry, as ours do:
#   1. installs podman, runc, mmdebstrap and podman's networking (netavark, aardvark-dns, the
#      CNI plugins its default configuration names, iptables) from Debian's archive if they
#      are missing (apt-get);
#   2. makes a minimal Debian bookworm root filesystem with mmdebstrap and imports it as the
#      base image (kept between runs; --fresh-base makes it again);
#   3. builds the release binaries as CI does (`cargo build --release --locked -p coordinator
#      -p worker`), drops their debug information as the Dockerfile's build stage does, and
#      imports them, with data/, as the image the Dockerfile copies them from;
#   4. `podman build -f deploy/Dockerfile` with BASE_IMAGE and BINARIES pointing at those two,
#      tagged smalltext:latest, the name the manifests use.
# Prints the time of each step and the image's size. Podman's settings for this sandbox are in
# deploy/podman/containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
image=${IMAGE:-localhost/smalltext:latest}
base=localhost/smalltext-base:bookworm
binaries=localhost/smalltext-binaries:local
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fresh_base=0
for arg in "$@"; do
  case "$arg" in
    --fresh-base) fresh_base=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

step() { printf '%s: %ss\n' "$1" "$(( $(date +%s) - $2 ))"; }

t=$(date +%s)
missing=()
for tool in podman runc mmdebstrap iptables; do command -v "$tool" >/dev/null || missing+=("$tool"); done
networking=(netavark aardvark-dns containernetworking-plugins)
installed=$(dpkg-query -W -f='${db:Status-Status}\n' "${networking[@]}" 2>/dev/null | grep -cx installed || true)
(( installed == ${#networking[@]} )) || missing+=("${networking[@]}")
if (( ${#missing[@]} )); then
  echo "installing ${missing[*]} from Debian's archive with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc netavark aardvark-dns containernetworking-plugins iptables mmdebstrap >/dev/null
fi
step "tools" "$t"

t=$(date +%s)
if (( fresh_base )) || ! podman image exists "$base"; then
  # minbase, as debian:bookworm-slim is, without documentation and translations.
  mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm - "$mirror" | podman import --quiet - "$base" >/dev/null
fi
step "base image ($base, mmdebstrap)" "$t"

t=$(date +%s)
cargo build --release --locked -p coordinator -p worker
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/src/target/release"
for bin in coordinator worker; do
  # As the Dockerfile's build stage does: no debug information, symbols kept.
  strip --strip-debug -o "$stage/src/target/release/$bin" "target/release/$bin"
done
cp -r data "$stage/src/data"
tar -C "$stage" -cf - src | podman import --quiet - "$binaries" >/dev/null
step "release binaries ($binaries)" "$t"

t=$(date +%s)
podman build --quiet -f deploy/Dockerfile \
  --build-arg BASE_IMAGE="$base" --build-arg BINARIES="$binaries" -t "$image" . >/dev/null
step "image ($image)" "$t"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
