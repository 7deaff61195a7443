#!/usr/bin/env bash
# Build the nginx image used by the test suite as the stand-in for the official nginx image
# (`nginx:alpine` for users), without any container registry: debootstrap a minimal Debian
# bookworm rootfs with Debian's nginx (1.22.1) and curl + wget, strip it, lay it out like the
# official image, and `docker import` it with the official image's metadata.
#
# Usage: tests/images/nginx/build.sh [TAG]
#   TAG defaults to $ORCHESTRATE_TEST_NGINX_IMAGE, else orchestrate-test/nginx:1.22.
#   If the tag already exists this exits 0 at once. Must run as root (debootstrap).
#   Optional: ORCHESTRATE_TEST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
#
# What a plan can rely on, as with the official image:
#   - CMD ["nginx", "-g", "daemon off;"], EXPOSE 80, STOPSIGNAL SIGQUIT (graceful stop).
#   - /etc/nginx/nginx.conf is the official one (user nginx, uid/gid 101; pid /run/nginx.pid;
#     `include /etc/nginx/conf.d/*.conf;` inside `http {}`), /etc/nginx/mime.types, and
#     /etc/nginx/conf.d/default.conf is the official default site (listen 80, server_name
#     localhost, /usr/share/nginx/html, /50x.html). Debian's sites-available/sites-enabled are
#     gone. As with the official image, a plan replaces conf.d/default.conf (or marks its own
#     server `default_server`): another conf.d file beside it also listens on 80, and which of
#     the two gets a request that names neither depends on the files' order.
#   - Logs go to the container's output: /var/log/nginx/access.log -> /dev/stdout,
#     /var/log/nginx/error.log -> /dev/stderr.
#   - `nginx -s reload` (and `nginx -t`) in the running container.
#   - An HTTP health check: curl (the official Debian and Alpine images have it) and wget
#     (busybox's in nginx:alpine), e.g. `curl -fsS http://127.0.0.1/` or `wget -qO- http://127.0.0.1/`.
# Not here: the official /docker-entrypoint.sh and its /docker-entrypoint.d scripts (envsubst of
# /etc/nginx/templates, the IPv6 listen, worker tuning): a plan renders its configuration itself.
# Modules: proxy, TLS, HTTP/2, gzip, realip, stub_status, auth_request and sub are built in
# (`nginx -V`); mail and stream are Debian dynamic modules left out (libnginx-mod-*), njs is absent.
# The tag is Debian bookworm's nginx version, as orchestrate-test/python:3.11 is its Python's.
set -euo pipefail

TAG="${1:-${ORCHESTRATE_TEST_NGINX_IMAGE:-orchestrate-test/nginx:1.22}}"
LOG_NAME=nginx-image
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

begin_build "$@"
# Debian's postinst does not start nginx in the chroot: invoke-rc.d finds no runlevel there.
make_rootfs nginx,curl,wget

# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not ours
deb_version="$(chroot "$ROOTFS" dpkg-query -W -f='${Version}' nginx)"
nginx_version="${deb_version%%-*}"
log "installed nginx $deb_version"

log "laying out /etc/nginx like the official image"
# The official image's user and group (101:101), which its nginx.conf names.
chroot "$ROOTFS" groupadd --system --gid 101 nginx
chroot "$ROOTFS" useradd --system --gid nginx --no-create-home --home-dir /nonexistent \
	--comment "nginx user" --shell /bin/false --uid 101 nginx
# Debian's layout (sites-available/sites-enabled with its default site, www-data, log files)
# and what only a booted Debian uses (init script, unit, logrotate, ufw, vim, apport).
rm -rf "${ROOTFS:?}"/etc/nginx/sites-available "${ROOTFS:?}"/etc/nginx/sites-enabled \
	"${ROOTFS:?}"/etc/nginx/snippets "${ROOTFS:?}"/etc/nginx/proxy_params "${ROOTFS:?}"/var/www \
	"${ROOTFS:?}"/etc/init.d/nginx "${ROOTFS:?}"/etc/default/nginx "${ROOTFS:?}"/etc/logrotate.d/nginx \
	"${ROOTFS:?}"/etc/ufw "${ROOTFS:?}"/lib/systemd/system/nginx.service "${ROOTFS:?}"/usr/share/vim \
	"${ROOTFS:?}"/usr/share/apport "${ROOTFS:?}"/etc/rc?.d/*nginx "${ROOTFS:?}"/var/log/nginx/*
# iproute2 is a dependency only for the postinst's `ss` (the official image has neither ss nor ip).
drop_package_files iproute2
ln -s /dev/stdout "$ROOTFS/var/log/nginx/access.log"
ln -s /dev/stderr "$ROOTFS/var/log/nginx/error.log"
# shellcheck disable=SC2016 # nginx's variables
cat >"$ROOTFS/etc/nginx/nginx.conf" <<'EOF'

user  nginx;
worker_processes  auto;

error_log  /var/log/nginx/error.log notice;
pid        /run/nginx.pid;


events {
    worker_connections  1024;
}


http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    access_log  /var/log/nginx/access.log  main;

    sendfile        on;
    #tcp_nopush     on;

    keepalive_timeout  65;

    #gzip  on;

    include /etc/nginx/conf.d/*.conf;
}
EOF
cat >"$ROOTFS/etc/nginx/conf.d/default.conf" <<'EOF'
server {
    listen       80;
    server_name  localhost;

    #access_log  /var/log/nginx/host.access.log  main;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    #error_page  404              /404.html;

    # redirect server error pages to the static page /50x.html
    #
    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
EOF
cat >"$ROOTFS/usr/share/nginx/html/50x.html" <<'EOF'
<!DOCTYPE html>
<html>
<head>
<title>Error</title>
</head>
<body>
<h1>An error occurred.</h1>
<p>Sorry, the page you are looking for is currently unavailable.<br/>
Please try again later.</p>
</body>
</html>
EOF
chmod 644 "$ROOTFS/etc/nginx/nginx.conf" "$ROOTFS/etc/nginx/conf.d/default.conf" \
	"$ROOTFS/usr/share/nginx/html/50x.html"
# Debian's modules-enabled holds no module with the `nginx` package alone; the official
# nginx.conf does not include it.
rmdir "$ROOTFS/etc/nginx/modules-enabled" 2>/dev/null || :
strip_rootfs

rootfs_image="$(import_rootfs "debootstrap $SUITE minbase + nginx $deb_version, curl, wget" \
	"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
	"ENV NGINX_VERSION=$nginx_version" \
	"EXPOSE 80" \
	'CMD ["nginx", "-g", "daemon off;"]' \
	"LABEL org.opencontainers.image.title=orchestrate-test-nginx" \
	"LABEL org.opencontainers.image.version=$deb_version")"

# `docker import --change` rejects STOPSIGNAL on engine 20.10 (as for the PostgreSQL image), so
# a one-line legacy build (no registry needed for a local FROM) adds the official SIGQUIT:
# nginx's graceful shutdown, which lets requests in flight finish (SIGTERM drops them).
log "adding STOPSIGNAL SIGQUIT"
if ! image="$(printf 'FROM %s\nSTOPSIGNAL SIGQUIT\n' "$rootfs_image" \
	| DOCKER_BUILDKIT=0 docker build --quiet - 2>"$ROOTFS.log")"; then
	cat "$ROOTFS.log" >&2
	docker image rm "$rootfs_image" >/dev/null 2>&1 || :
	die "docker build (STOPSIGNAL layer) failed"
fi

# Checked in a container of the image before it gets its tag (the tag is what the fast path
# trusts): the configuration, the binaries, and that nginx serves, reloads and stops.
log "checking the image"
# shellcheck disable=SC2016 # for the container's shell
if ! out="$(docker run --rm --network none "$image" /bin/sh -ec '
	for d in /bin /sbin /lib /lib64; do [ -d $d ]; done
	nginx -t 2>&1; nginx -V 2>&1 | grep -q http_ssl_module; curl --version; wget --version
	nginx -g "daemon off;" & pid=$!
	for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1/ 2>/dev/null && break; sleep 0.1; done
	curl -fsS http://127.0.0.1/ | grep -q "Welcome to nginx"
	wget -qO- http://localhost/ >/dev/null
	nginx -s reload; sleep 0.3; curl -fsS -o /dev/null http://127.0.0.1/
	kill -QUIT $pid; wait $pid' 2>&1)"; then
	printf '%s\n' "$out" | tail -n 30 >&2
	docker image rm "$image" "$rootfs_image" >/dev/null 2>&1 || :
	die "the image fails its check (nginx -t, curl, wget, serving, nginx -s reload, SIGQUIT)"
fi
docker tag "$image" "$TAG"
end_build
