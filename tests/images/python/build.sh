#!/usr/bin/env bash
# Build the Python 3.11 image used by the test suite as the base of the reference
# application's image, without any container registry: debootstrap a minimal Debian
# bookworm rootfs with Debian's python3 (3.11), pip and venv, strip it, and `docker import`
# it with the metadata of the official python:3.11-slim image (PATH, LANG, CMD).
#
# Usage: tests/images/python/build.sh [TAG]
#   TAG defaults to $ORCHESTRATE_TEST_PYTHON_IMAGE, else orchestrate-test/python:3.11.
#   If the tag already exists this exits 0 at once. Must run as root (debootstrap).
#   Optional: ORCHESTRATE_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

TAG="${1:-${ORCHESTRATE_TEST_PYTHON_IMAGE:-orchestrate-test/python:3.11}}"
LOG_NAME=python-image
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

begin_build "$@"
# python-is-python3: `python` as in the official image; adduser beside useradd (passwd, in minbase).
make_rootfs python3,python3-pip,python3-venv,python-is-python3,adduser

py_version="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')"
log "installed Python $py_version"

# PEP 668: Debian marks its Python "externally managed", so a plain `pip install` refuses to
# run. The official image has no such marker; without it `pip install` behaves the same in both
# (into /usr/local, as root) and a Dockerfile needs no flag that only this image wants.
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
strip_rootfs

# Sanity checks on the stripped rootfs: what a Dockerfile does with python:3.11-slim.
for cmd in "python --version" "python3 --version" "pip --version" "pip3 --version" \
	"useradd --help" "adduser --version" "python -c 'import ssl, sqlite3, venv, ensurepip'" \
	"python -m venv /tmp/v" "/tmp/v/bin/pip --version"; do
	chroot "$ROOTFS" sh -c "$cmd" >/dev/null || die "'$cmd' fails in the stripped rootfs"
done
rm -rf "${ROOTFS:?}"/tmp/*

image="$(import_rootfs "debootstrap $SUITE minbase + python3 $py_version, pip, venv" \
	"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
	"ENV LANG=C.UTF-8" \
	"ENV PYTHON_VERSION=$py_version" \
	'CMD ["python3"]' \
	"LABEL org.opencontainers.image.title=orchestrate-test-python" \
	"LABEL org.opencontainers.image.version=$py_version")"
docker tag "$image" "$TAG"
end_build
