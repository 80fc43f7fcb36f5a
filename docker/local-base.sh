#!/bin/sh
# A Debian bookworm base with python3.11 made without any image registry (debootstrap from
# the Debian mirror), for building docker/Dockerfile where base images cannot be pulled:
#   sudo docker/local-base.sh            # -> localhost/debian-python:3.11-bookworm (buildah, vfs)
#   VERACITY_IMAGE_BASE=localhost/debian-python:3.11-bookworm pytest -m slow tests/integration/test_image_build.py
# Needs root, and Debian's debootstrap and buildah packages.
set -eu
TAG=${1:-localhost/debian-python:3.11-bookworm}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# python3.11-venv's dependencies are listed: debootstrap does not resolve them.
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3.11-distutils,python3-pip-whl,python3-setuptools-whl,python3-lib2to3,ca-certificates \
  bookworm "$WORK/rootfs" http://deb.debian.org/debian
rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
ctr=$(buildah --storage-driver vfs from scratch)
buildah --storage-driver vfs add "$ctr" "$WORK/rootfs.tar" /
buildah --storage-driver vfs commit "$ctr" "$TAG"
buildah --storage-driver vfs rm "$ctr"
