# Shared by the test images' build.sh scripts (sourced, never run). There is no container
# registry here, so each test image is a minimal Debian rootfs debootstrapped from the Debian
# mirror, stripped, and `docker import`ed with the metadata the official image has.
#
# The caller sets TAG (the image) and LOG_NAME (its log prefix and lock name), then calls:
#   begin_build "$@"            exits 0 at once when TAG exists; else root and engine checks,
#                               a flock so concurrent builds wait for each other, a second check
#   make_rootfs PKG[,PKG...]    debootstrap --variant=minbase $SUITE with those packages into $ROOTFS
#                               (a temp dir that a trap removes on exit, even on failure or kill)
#   drop_package_files PKG...   deletes the files (not the directories, nor links to them) a
#                               package installed
#   strip_rootfs                docs, man pages, message catalogs, apt/dpkg caches and logs, /dev, /tmp
#   import_rootfs MSG CHANGE... tar | docker import --change CHANGE...; prints the new image's id
#   end_build                   prints the tag, its size and the time taken
# Optional: ORCHESTRATE_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).

SUITE=bookworm
MIRROR="${ORCHESTRATE_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS=""

log() { printf '[%s] %s\n' "$LOG_NAME" "$*"; }
die() { printf '[%s] error: %s\n' "$LOG_NAME" "$*" >&2; exit 1; }

image_exists() { docker image inspect "$TAG" >/dev/null 2>&1; }

begin_build() {
	# Fast path: this runs before every test session.
	if image_exists; then
		log "image $TAG already exists; nothing to do"
		exit 0
	fi
	[[ "$(id -u)" == 0 ]] || die "building $TAG needs root (debootstrap); run: sudo $0 $*"
	docker version >/dev/null 2>&1 || die "cannot reach the Docker engine (docker version failed)"

	# Serialise concurrent builds (e.g. two test sessions starting at once); the
	# second one waits, then finds the image and returns.
	exec 9>"/var/lock/orchestrate-test-$LOG_NAME.lock"
	if ! flock -n 9; then
		log "another build is running; waiting for it"
		flock 9
	fi
	if image_exists; then
		log "image $TAG was built by a concurrent run; nothing to do"
		exit 0
	fi

	start=$SECONDS
	log "building $TAG from Debian $SUITE ($MIRROR); this takes a minute or two"
	if ! command -v debootstrap >/dev/null; then
		log "installing debootstrap"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	fi
	trap cleanup EXIT
	# Make Ctrl-C / kill run the EXIT trap too.
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

cleanup() {
	local rc=$?
	if [[ -n "$ROOTFS" && -d "$ROOTFS" ]]; then
		# debootstrap mounts proc/sys (and in containers binds /dev) inside the
		# target and may leave them behind when it fails: unmount anything under
		# the rootfs, deepest first, and never let rm cross into another fs.
		awk -v r="$ROOTFS/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts \
			| sort -r | while read -r m; do umount -l "$m" || true; done
		rm -rf --one-file-system "$ROOTFS"
		rm -f "$ROOTFS.log"
	fi
	((rc == 0)) || log "build FAILED (exit $rc)"
}

make_rootfs() {
	ROOTFS="$(mktemp -d "/var/tmp/orchestrate-$LOG_NAME-rootfs.XXXXXX")"
	chmod 755 "$ROOTFS"   # becomes / of the image
	log "debootstrap --variant=minbase $SUITE + $1 into $ROOTFS"
	# dpkg need not fsync every file of a throwaway rootfs (~10 s less of ~70 s for the Python image).
	mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d"
	echo force-unsafe-io >"$ROOTFS/etc/dpkg/dpkg.cfg.d/orchestrate-unsafe-io"
	if ! debootstrap --variant=minbase --include="$1" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
		tail -n 30 "$ROOTFS.log" >&2
		if [[ -f "$ROOTFS/debootstrap/debootstrap.log" ]]; then
			tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
		fi
		die "debootstrap failed"
	fi
	rm -f "$ROOTFS/etc/dpkg/dpkg.cfg.d/orchestrate-unsafe-io"
	log "debootstrap done after $((SECONDS - start)) s"
}

# dpkg's database is left as is: the images never run apt or dpkg.
drop_package_files() {
	local pkg f
	for pkg; do
		if ! chroot "$ROOTFS" dpkg-query -W "$pkg" >/dev/null 2>&1; then
			log "  (package $pkg is not installed; skipped)"
			continue
		fi
		while IFS= read -r f; do
			# A directory the package lists may be a symlink in the rootfs: merged /usr makes
			# /bin, /sbin and /lib links to usr/..., and removing one breaks the whole image.
			if [[ -L "$ROOTFS$f" ]] && chroot "$ROOTFS" test -d "$f"; then continue; fi
			if [[ -L "$ROOTFS$f" || -f "$ROOTFS$f" ]]; then rm -f "${ROOTFS:?}$f"; fi
		done < <(chroot "$ROOTFS" dpkg-query -L "$pkg")
	done
}

strip_rootfs() {
	# Docs, man pages, message catalogs.
	rm -rf "${ROOTFS:?}"/usr/share/doc/* "${ROOTFS:?}"/usr/share/man/* "${ROOTFS:?}"/usr/share/info/* \
		"${ROOTFS:?}"/usr/share/locale/* "${ROOTFS:?}"/usr/share/lintian
	# apt/dpkg caches, package lists and logs.
	rm -rf "${ROOTFS:?}"/var/lib/apt/lists/* "${ROOTFS:?}"/var/cache/apt/* "${ROOTFS:?}"/var/cache/debconf/*-old \
		"${ROOTFS:?}"/var/lib/dpkg/*-old "${ROOTFS:?}"/var/log/*.log "${ROOTFS:?}"/var/log/apt/*
	# Docker provides these at run time; /dev gets its own tmpfs.
	rm -rf "${ROOTFS:?}"/dev/* "${ROOTFS:?}"/tmp/* "${ROOTFS:?}"/var/tmp/* "${ROOTFS:?}"/run/adduser
	: >"$ROOTFS/etc/resolv.conf"
	: >"$ROOTFS/etc/hostname"
}

import_rootfs() {
	local message=$1 c change_args=()
	shift
	for c; do change_args+=(--change "$c"); done
	log "importing the rootfs ($(du -sh --one-file-system "$ROOTFS" | cut -f1))" >&2
	tar --numeric-owner -C "$ROOTFS" -cf - . | docker import "${change_args[@]}" --message "$message" -
}

end_build() {
	local size
	size="$(docker image inspect -f '{{.Size}}' "$TAG")"
	log "built $TAG ($((size / 1000000)) MB) in $((SECONDS - start)) s"
}
