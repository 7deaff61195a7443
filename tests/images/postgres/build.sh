#!/usr/bin/env bash
# Build the PostgreSQL 15 image used by the test suite, without any container
# registry: debootstrap a minimal Debian bookworm rootfs with postgresql-15
# from the Debian mirror, strip it, and `docker import` it with the metadata
# the official postgres image has (entrypoint, PGDATA, volume, port, ...).
#
# Usage: tests/images/postgres/build.sh [TAG]
#   TAG defaults to $ORCHESTRATE_TEST_PG_IMAGE, else orchestrate-test/postgres:15.
#   If the tag already exists this exits 0 at once. Must run as root (debootstrap).
#   Optional: ORCHESTRATE_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

TAG="${1:-${ORCHESTRATE_TEST_PG_IMAGE:-orchestrate-test/postgres:15}}"
LOG_NAME=pg-image
PG_MAJOR=15
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

begin_build "$@"
make_rootfs "postgresql-$PG_MAJOR"

# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not ours
pg_version="$(chroot "$ROOTFS" dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR")"
log "installed postgresql-$PG_MAJOR $pg_version"

log "removing Debian's default cluster and what the tests do not need"
# The postgresql-15 postinst creates cluster 15/main; the image must not carry
# one (nor create one, should anybody apt-get install in it, like the official image).
rm -rf "${ROOTFS:?}/var/lib/postgresql/$PG_MAJOR" "${ROOTFS:?}/etc/postgresql/$PG_MAJOR" \
	"${ROOTFS:?}"/var/log/postgresql/*
sed -ri 's/^#?\s*(create_main_cluster)\s*=.*/\1 = false/' "$ROOTFS/etc/postgresql-common/createcluster.conf"

# LLVM (+ z3) is only for JIT, optional in PostgreSQL: without llvmjit.so the
# server silently runs with JIT off, which is all a test needs (~130 MB).
drop_package_files libllvm14 libz3-4
rm -rf "${ROOTFS:?}/usr/lib/postgresql/$PG_MAJOR/lib/llvmjit.so" \
	"${ROOTFS:?}/usr/lib/postgresql/$PG_MAJOR/lib/llvmjit_types.bc" \
	"${ROOTFS:?}/usr/lib/postgresql/$PG_MAJOR/lib/bitcode"
# Full perl (~45 MB) only serves postgresql-common's cluster tools and the
# /usr/bin wrappers (pg_wrapper). perl-base stays (dpkg needs it). The
# wrappers are pointed straight at the PostgreSQL 15 binaries instead.
drop_package_files perl perl-modules-5.36 libperl5.36
for link in "$ROOTFS"/usr/bin/*; do
	[[ -L "$link" && "$(readlink "$link")" == */pg_wrapper ]] || continue
	if [[ -x "$ROOTFS/usr/lib/postgresql/$PG_MAJOR/bin/${link##*/}" ]]; then
		ln -sfn "../lib/postgresql/$PG_MAJOR/bin/${link##*/}" "$link"
	else
		rm -f "$link"
	fi
done
# locale-gen's sources: C.UTF-8 is built into libc6 (/usr/lib/locale/C.utf8).
drop_package_files locales
# Its man pages; then the docs, caches and logs of every package.
rm -rf "${ROOTFS:?}/usr/share/postgresql/$PG_MAJOR/man"
# The snakeoil key made by ssl-cert at install time is unused (ssl is off).
rm -f "${ROOTFS:?}/etc/ssl/private/ssl-cert-snakeoil.key" "${ROOTFS:?}/etc/ssl/certs/ssl-cert-snakeoil.pem"
strip_rootfs

log "installing the entrypoint and the data/socket directories"
install -m 0755 "$HERE/docker-entrypoint.sh" "$ROOTFS/usr/local/bin/docker-entrypoint.sh"
install -d -m 0755 "$ROOTFS/docker-entrypoint-initdb.d"
# chroot so the "postgres" name resolves to the uid/gid adduser gave it.
chroot "$ROOTFS" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
chroot "$ROOTFS" install -d -o postgres -g postgres -m 3775 /run/postgresql

# Sanity checks before import: these are what the entrypoint relies on.
for f in postgres initdb pg_ctl pg_isready psql pg_dump; do
	[[ -x "$ROOTFS/usr/lib/postgresql/$PG_MAJOR/bin/$f" ]] || die "missing $f in the rootfs"
done
[[ -x "$ROOTFS/usr/bin/setpriv" ]] || die "missing setpriv in the rootfs"
[[ -d "$ROOTFS/usr/lib/locale/C.utf8" ]] || die "missing the C.UTF-8 locale in the rootfs"
# Running the binaries proves no library they link was stripped.
for f in postgres psql pg_dump pg_isready; do
	chroot "$ROOTFS" "/usr/lib/postgresql/$PG_MAJOR/bin/$f" --version >/dev/null \
		|| die "$f does not run in the stripped rootfs"
done
chroot "$ROOTFS" /usr/bin/psql --version >/dev/null || die "/usr/bin/psql does not run"

changes=(
	"ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	"ENV PG_MAJOR=$PG_MAJOR"
	"ENV PGDATA=/var/lib/postgresql/data"
	"ENV LANG=C.UTF-8"
	"VOLUME /var/lib/postgresql/data"
	"EXPOSE 5432"
	'ENTRYPOINT ["docker-entrypoint.sh"]'
	'CMD ["postgres"]'
	"LABEL org.opencontainers.image.title=orchestrate-test-postgres"
	"LABEL org.opencontainers.image.version=$pg_version"
)
rootfs_image="$(import_rootfs "debootstrap $SUITE minbase + postgresql-$PG_MAJOR $pg_version" "${changes[@]}")"

# `docker import --change` rejects STOPSIGNAL ("stopsignal is not a valid
# change command" on engine 20.10), so a one-line build on top adds it.
# SIGINT = PostgreSQL "fast" shutdown, like the official image; the default
# SIGTERM is "smart" shutdown, which waits for every client to disconnect.
# The legacy builder (no BuildKit, no context) needs no registry for a local
# FROM; the untagged imported image stays as the hidden parent layer.
log "adding STOPSIGNAL SIGINT and tagging $TAG"
if ! out="$(printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$rootfs_image" \
	| DOCKER_BUILDKIT=0 docker build --quiet --tag "$TAG" - 2>&1)"; then
	printf '%s\n' "$out" >&2
	docker image rm "$rootfs_image" >/dev/null 2>&1 || :
	die "docker build (STOPSIGNAL layer) failed"
fi

end_build
