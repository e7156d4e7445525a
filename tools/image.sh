#!/usr/bin/env bash
# `make image`: the operator's image without Docker, Podman or a registry, the same image as the
# Containerfile describes. A Debian 12 root filesystem from Debian's packages (mmdebstrap), a venv at
# /opt/ve-migrate made by that filesystem's own python3 and filled from wheels built here (the
# project's, and libvirt-python compiled against this machine's libvirt-dev, Debian 12's libvirt like
# the image's libvirt0), packed as an OCI archive with umoci. Everything lands outside the
# repository, in $VEMIGRATE_IMAGE_DIR (default ~/.cache/vemigrate/image). Needs root (mmdebstrap's
# root mode, chroot).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$here/.venv}
out=${VEMIGRATE_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vemigrate/image}
python=$venv/bin/python
started=$SECONDS

name=ve-migrate
version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$here/pyproject.toml")
revision=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
git -C "$here" diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
archive=$out/$name-$version.oci.tar
venv_in_image=/opt/ve-migrate
uid=65532
# The archive's reference (index.json's org.opencontainers.image.ref.name) is the whole name, not only
# the tag: `ctr image import` and `podman load` then name the image ve-migrate:<version> by themselves.
ref=$name:$version

mkdir -p "$out/debs"
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. Wheels, on this machine: the project with its libvirt extra from a copy of its sources (a build in
# the repository would leave build/ and egg-info behind; only operator/vemigrate is copied, never the
# local environment operator/vemigrate_dev), its dependencies from PyPI, libvirt-python compiled here
# (pip's own cache keeps that compiled wheel for the next build), and pip itself, run from its wheel
# inside the root filesystem so that the image never holds pip.
echo "image: wheels"
mkdir -p "$work/src/operator" "$work/wheels"
cp -a "$here/pyproject.toml" "$here/README.md" "$work/src/"
cp -a "$here/operator/vemigrate" "$work/src/operator/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel -q --disable-pip-version-check --wheel-dir "$work/wheels" "$work/src[libvirt]"
"$python" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps --dest "$work/wheels" pip
# Wheels that are not for CPython 3.11 on glibc x86-64 (or pure Python) would not load in the image.
for whl in "$work/wheels"/*.whl; do
    case ${whl##*/} in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp311-*.whl | *-abi3-*.whl) ;;
        *) echo "image: $whl is not for CPython 3.11" >&2; exit 1 ;;
    esac
done
pip_whl=$(cd "$work/wheels" && ls pip-*.whl)

# 2. The root filesystem: Debian 12 from this machine's own apt sources, only what the operator
# runs with. Downloaded .debs are kept between builds ($out/debs). Documentation, manual pages and
# translations are left out (dpkg path-exclude), the copyright files kept.
echo "image: root filesystem (mmdebstrap)"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sources+=("$f")
done
((${#sources[@]})) || { echo "image: no apt sources on this machine" >&2; exit 1; }
rootfs=$work/bundle/rootfs
# pip inside the chroot sees none of this machine's pip settings (PIP_FIND_LINKS, PIP_CERT, ...).
clean_env="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8"
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$ref"
umoci unpack --image "$work/oci:$ref" "$work/bundle" >/dev/null
rmdir "$rootfs"
mmdebstrap --quiet --mode=root --variant=apt --skip=essential/unlink \
    --include=python3,libvirt0,openssh-client,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$out/debs' /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives '$out/debs'" \
    --customize-hook="copy-in '$work/wheels' /tmp" \
    --customize-hook="chroot \"\$1\" $clean_env python3 -m venv --without-pip $venv_in_image" \
    --customize-hook="chroot \"\$1\" $clean_env $venv_in_image/bin/python /tmp/wheels/$pip_whl/pip install -q --no-index \
        --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check --root-user-action=ignore '$name[libvirt]==$version'" \
    --customize-hook='rm -rf "$1"/tmp/wheels "$1"/root/.cache' \
    --customize-hook="echo 'nonroot:x:$uid:$uid:ve-migrate:/tmp:/usr/sbin/nologin' >>\"\$1\"/etc/passwd" \
    --customize-hook="echo 'nonroot:x:$uid:' >>\"\$1\"/etc/group" \
    bookworm "$rootfs" "${sources[@]}" </dev/null
# mmdebstrap's own cleanup leaves apt's package lists and caches out; what is left must not hold a
# compiler or pip.
for tool in gcc cc c++ make pip pip3; do
    if chroot "$rootfs" /bin/sh -c "command -v $tool" >/dev/null 2>&1; then
        echo "image: $tool found in the root filesystem" >&2
        exit 1
    fi
done

# 3. The OCI image: one layer, the configuration the chart's Deployment expects (`command:
# [vemigrate]` found on PATH, UID/GID 65532, HOME=/tmp on its emptyDir).
echo "image: OCI archive (umoci)"
umoci repack --image "$work/oci:$ref" "$work/bundle"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
umoci config --image "$work/oci:$ref" \
    --author "$name" --created "$created" \
    --config.user "$uid:$uid" --config.workingdir /tmp \
    --config.env "PATH=$venv_in_image/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env HOME=/tmp --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.entrypoint vemigrate --config.cmd run \
    --config.label "org.opencontainers.image.title=$name" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$revision" \
    --config.label "org.opencontainers.image.created=$created" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.base.name=debian:bookworm" \
    --config.label "org.opencontainers.image.description=ve-migrate: Kubernetes operator migrating VMs and containers between hypervisor hosts" \
    --manifest.annotation "org.opencontainers.image.version=$version" \
    --manifest.annotation "org.opencontainers.image.revision=$revision"
umoci gc --layout "$work/oci"
tar -C "$work/oci" -cf "$archive.new" oci-layout index.json blobs
mv "$archive.new" "$archive"

digest=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/oci/index.json")
size=$(stat -c %s "$archive")
echo "image: $archive"
echo "image: $ref, manifest $digest, $((size / 1024 / 1024)) MiB ($size bytes), built in $((SECONDS - started)) s"
