#!/usr/bin/env bash
# What a real image build needs on a machine that reaches Debian's packages and PyPI but no image
# registry: Debian's Docker engine and buildx, a Debian bookworm root filesystem made with
# debootstrap (python3 and venv included) for `docker import`, and a wheelhouse of sciflow's
# dependencies resolved by that root filesystem's own Python, so a build pulls nothing.
#
#   bash images/local_base.sh [DIR]     # `make docker-base`; DIR defaults to .cache/docker-base
#
# Writes DIR/rootfs.tar.zst and DIR/wheels/, each once (delete one to remake it). tests/images
# starts the engine, imports the root filesystem and builds images/flows against them offline.
# Where this machine cannot (not root, no apt-get), it prints why and exits 0: the test then
# skips with its own reason.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.cache/docker-base}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# Debian's buildx package is in the release after bookworm; it needs only libc6.
BUILDX_SUITE=trixie
PYTHON=${PYTHON:-$PWD/.venv/bin/python}

cannot() { echo "docker-base: skipped: $*" >&2; exit 0; }
[ "$(id -u)" = 0 ] || cannot "debootstrap and dockerd need root"
command -v apt-get > /dev/null || cannot "no apt-get: Debian's docker.io and debootstrap install with it"

missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
command -v debootstrap > /dev/null || missing+=(debootstrap)
command -v zstd > /dev/null || missing+=(zstd)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi

if ! docker buildx version > /dev/null 2>&1; then
    lists=$(mktemp -d)
    trap 'rm -rf "$lists"' EXIT
    mkdir -p "$lists/lists/partial" "$lists/cache/archives/partial"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$MIRROR" "$BUILDX_SUITE" /usr/share/keyrings/debian-archive-keyring.gpg > "$lists/buildx.sources"
    apt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$lists"
         -o "Dir::State::Lists=$lists/lists" -o "Dir::Cache=$lists/cache")
    apt-get "${apt[@]}" update -qq
    (cd "$lists" && apt-get "${apt[@]}" download -qq docker-buildx 2> /dev/null)
    dpkg -i "$lists"/docker-buildx_*.deb > /dev/null
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -f "$OUT/rootfs.tar.zst" ] && [ -f "$OUT/wheels/.complete" ]; then
    echo "docker-base: $OUT is already made"
    exit 0
fi
requirements=$OUT/requirements.txt
"$PYTHON" - > "$requirements" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
# What `pip install .` inside the image needs: the dependencies and the build backend.
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
EOF

rootfs=$(mktemp -d)
wheels=$rootfs/tmp/wheels
trap 'rm -rf "$rootfs"; rm -rf "${lists:-}"' EXIT
# The machine's pip (its index and wheel locations: torch's CPU wheel) builds the wheelhouse
# while debootstrap runs.
mkdir -p "$OUT/host-wheels"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT/host-wheels" -r "$requirements" > "$OUT/pip-wheel.log" 2>&1 &
pip_wheel=$!
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    "$SUITE" "$rootfs" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 \
    || { tail -5 "$OUT/debootstrap.log" >&2; exit 1; }
wait "$pip_wheel" || { tail -5 "$OUT/pip-wheel.log" >&2; exit 1; }

# Debian's Python is 3.11.2: dependencies marked for it (python_full_version < "3.11.3") are
# found only by resolving with it, so its own pip adds them, with this machine's CA bundle and
# none of this shell's pip or requests settings.
mkdir -p "$wheels"
cp "$OUT"/host-wheels/*.whl "$requirements" "$wheels/"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/ca.crt"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/ca.crt sh -c \
    'python3 -m venv /tmp/pip && /tmp/pip/bin/pip download --quiet --disable-pip-version-check \
     --find-links /tmp/wheels --dest /tmp/wheels -r /tmp/wheels/requirements.txt'
rm -rf "$OUT/wheels" "$OUT/host-wheels"
mv "$wheels" "$OUT/wheels"
touch "$OUT/wheels/.complete"

rm -rf "$rootfs"/tmp/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
: > "$rootfs/etc/resolv.conf"
tar -C "$rootfs" --numeric-owner -c . | zstd -q -T0 -f -o "$OUT/rootfs.tar.zst"
echo "docker-base: made $OUT/rootfs.tar.zst and $OUT/wheels"
