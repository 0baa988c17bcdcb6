#!/bin/sh
# A Debian bookworm base image with Python 3.11, built from Debian's packages (for machines that
# reach no container registry): ./debian-base.sh rootfs.tar, then
# `podman import rootfs.tar localhost/debian-py:bookworm` and build with
# --build-arg BASE=localhost/debian-py:bookworm. No documentation, manual pages or translations,
# and merged /usr without the usrmerge package (which would pull in perl): 128 MB.
set -e
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$1"
