#!/bin/sh
# Installs everything imcache's build, tests and demo need on Debian 12.
# Idempotent: packages already present are left alone.
set -eu
PKGS="build-essential pkg-config clang-format clang libclang-rt-14-dev
libdevmapper-dev libcurl4-openssl-dev libssl-dev libarchive-dev libjansson-dev
libmicrohttpd-dev libgnutls28-dev libzstd-dev check libnghttp2-dev libprotobuf-c-dev
protobuf-c-compiler golang-github-containerd-containerd-dev golang-github-gogo-protobuf-dev
libprotobuf-dev libfuse3-dev fuse3
docker-registry skopeo umoci crun runc busybox-static
e2fsprogs xfsprogs util-linux curl ca-certificates jq pigz openssl
containerd nginx-light apache2-utils debootstrap zstd python3 iproute2
qemu-system-x86 qemu-utils linux-image-amd64 thin-provisioning-tools dmsetup xz-utils cpio
wrk gnuplot-nox fonts-dejavu-core man-db"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
# The Debian packages start a registry on :5000, nginx on :80 and containerd as services;
# imcache's tests and demo run their own on random loopback ports and private sockets and
# never use those.
for svc in docker-registry nginx containerd; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
		systemctl stop "$svc" || true
		systemctl disable "$svc" 2>/dev/null || true
	fi
done
