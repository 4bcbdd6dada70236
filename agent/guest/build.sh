#!/bin/bash
# Build the armfleet stress guest (kernel + busybox initramfs) from Debian
# packages, per architecture.
#
#   agent/guest/build.sh [arm64|x86_64|all]      (default: all)
#
# Output:  ${ARMFLEET_GUEST_DIR:-$HOME/.cache/armfleet/guest}/<arch>/{vmlinuz,initrd.gz,stamp}
#
# Idempotent: <arch>/stamp records every input (kernel and busybox package
# versions, sha256 of build.sh, init and dirty.c); when it matches, nothing
# is downloaded or rebuilt.
#
# What it changes on the host (needs root unless the stamp is current):
#   * arm64: `dpkg --add-architecture arm64` + `apt-get update` (once)
#   * apt-get install --no-install-recommends of the tools it lacks:
#       cpio, gcc + libc6-dev (x86_64), gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (arm64)
#   * downloads (apt-get download, into the cache dir, not installed):
#       linux-image-6.1.0-NN-<arm64|amd64>, busybox-static:<arm64|amd64>
#     NN is what the linux-image-<arm64|amd64> metapackage depends on, unless
#     ARMFLEET_GUEST_KPKG_<ARM64|AMD64> names a package (pin for reproducibility).
#
# The initramfs is reproducible: files sorted, mtimes clamped to 0,
# cpio --reproducible, gzip -n.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT_ROOT="${ARMFLEET_GUEST_DIR:-$HOME/.cache/armfleet/guest}"
WHAT="${1:-all}"

log() { echo "[guest-build] $*" >&2; }
die() { echo "[guest-build] ERROR: $*" >&2; exit 1; }

need_root() {
	[ "$(id -u)" = 0 ] || die "$* needs root (run: sudo $0 $WHAT)"
}

apt_ensure() {
	# apt_ensure pkg... : install the missing ones
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		need_root "installing ${missing[*]}"
		log "apt-get install ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	fi
}

ensure_foreign_arch() {
	local debarch="$1"
	[ "$debarch" = "$(dpkg --print-architecture)" ] && return 0
	if ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
		need_root "dpkg --add-architecture $debarch"
		log "dpkg --add-architecture $debarch && apt-get update"
		dpkg --add-architecture "$debarch"
		apt-get update -q >&2
	elif ! apt-cache show "busybox-static:$debarch" >/dev/null 2>&1; then
		need_root "apt-get update"
		log "apt-get update (no $debarch package lists yet)"
		apt-get update -q >&2
	fi
}

# kernel_pkg <debarch> : linux-image-6.1.0-NN-<flavour>
kernel_pkg() {
	local debarch="$1" var
	var="ARMFLEET_GUEST_KPKG_$(echo "$debarch" | tr a-z A-Z)"
	if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
	apt-cache depends "linux-image-$debarch:$debarch" 2>/dev/null \
		| sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -n1
}

pkg_version() { # pkg_version name:arch
	apt-cache policy "$1" | sed -n 's/^ *Candidate: //p' | head -n1
}

build_arch() {
	local arch="$1" debarch cc flavour console
	case "$arch" in
	arm64) debarch=arm64; cc=aarch64-linux-gnu-gcc ;;
	x86_64) debarch=amd64; cc=gcc ;;
	*) die "unknown arch '$arch' (arm64|x86_64|all)" ;;
	esac
	local out="$OUT_ROOT/$arch"
	mkdir -p "$out"

	local inputs_hash
	inputs_hash="$(cat "$HERE/build.sh" "$HERE/init" "$HERE/dirty.c" | sha256sum | cut -c1-16)"
	# Fast path: stamp present and matches the scripts; do not consult apt
	# unless asked to refresh (ARMFLEET_GUEST_REFRESH=1 picks up a newer kernel).
	if [ -f "$out/stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ] \
		&& grep -qx "inputs=$inputs_hash" "$out/stamp" && [ "${ARMFLEET_GUEST_REFRESH:-0}" != 1 ]; then
		log "$arch: up to date ($out, $(grep '^kernel=' "$out/stamp"))"
		return 0
	fi

	log "$arch: building into $out"
	ensure_foreign_arch "$debarch"
	if [ "$arch" = arm64 ]; then
		apt_ensure cpio gcc-aarch64-linux-gnu libc6-dev-arm64-cross
	else
		apt_ensure cpio gcc libc6-dev
	fi

	local kpkg kver bbver
	kpkg="$(kernel_pkg "$debarch")"
	[ -n "$kpkg" ] || die "cannot resolve linux-image-$debarch:$debarch (apt-get update?)"
	kver="$(pkg_version "$kpkg:$debarch")"
	bbver="$(pkg_version "busybox-static:$debarch")"
	[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "no candidate for $kpkg:$debarch"
	local want_stamp
	want_stamp="$(printf 'inputs=%s\nkernel=%s=%s\nbusybox=busybox-static=%s\n' "$inputs_hash" "$kpkg" "$kver" "$bbver")"
	if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want_stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ]; then
		log "$arch: up to date ($kpkg $kver)"
		return 0
	fi

	local tmp="$out/.build"
	rm -rf "$tmp"
	mkdir -p "$tmp/debs" "$tmp/k" "$tmp/bb" "$tmp/root"
	log "$arch: apt-get download $kpkg:$debarch=$kver busybox-static:$debarch=$bbver"
	# _apt cannot write into root-owned dirs; download as-is (warning is harmless).
	(cd "$tmp/debs" && apt-get download -q "$kpkg:$debarch=$kver" "busybox-static:$debarch=$bbver" 2>&1 \
		| grep -v 'Download is performed unsandboxed' >&2) || true
	ls "$tmp"/debs/linux-image-*.deb "$tmp"/debs/busybox-static_*.deb >/dev/null 2>&1 || die "apt-get download failed"
	log "$arch: unpacking"
	dpkg -x "$tmp"/debs/linux-image-*.deb "$tmp/k"
	dpkg -x "$tmp"/debs/busybox-static_*.deb "$tmp/bb"

	local vmlinuz
	vmlinuz="$(ls "$tmp"/k/boot/vmlinuz-* | head -n1)"
	[ -f "$vmlinuz" ] || die "no vmlinuz in $kpkg"

	log "$arch: compiling dirty.c with $cc -static"
	"$cc" -static -O2 -Wall -pthread -o "$tmp/root/dirty" "$HERE/dirty.c"

	local r="$tmp/root"
	mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/tmp" "$r/lib/modules"
	cp "$tmp/bb/bin/busybox" "$r/bin/busybox"
	mv "$r/dirty" "$r/bin/dirty"
	cp "$HERE/init" "$r/init"
	chmod 0755 "$r/init" "$r/bin/busybox" "$r/bin/dirty"
	ln -s busybox "$r/bin/sh"
	# pvpanic modules when the kernel has them (amd64 yes, arm64 not built)
	find "$tmp/k/lib/modules" -path '*/misc/pvpanic/*.ko' -exec cp {} "$r/lib/modules/" \; 2>/dev/null || true

	log "$arch: packing initramfs"
	find "$r" -exec touch -h -d @0 {} +
	(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet --reproducible -o -H newc -R 0:0) \
		| gzip -n -9 > "$tmp/initrd.gz"

	install -m 0644 "$vmlinuz" "$out/vmlinuz.new"
	install -m 0644 "$tmp/initrd.gz" "$out/initrd.gz.new"
	mv -f "$out/vmlinuz.new" "$out/vmlinuz"
	mv -f "$out/initrd.gz.new" "$out/initrd.gz"
	printf '%s\n' "$want_stamp" > "$out/stamp"
	rm -rf "$tmp"
	log "$arch: done: $out/vmlinuz ($(du -h "$out/vmlinuz" | cut -f1)), $out/initrd.gz ($(du -h "$out/initrd.gz" | cut -f1)); $kpkg $kver"
}

case "$WHAT" in
all) build_arch arm64; build_arch x86_64 ;;
arm64 | aarch64) build_arch arm64 ;;
x86_64 | amd64) build_arch x86_64 ;;
*) die "usage: $0 [arm64|x86_64|all]" ;;
esac
log "guests in $OUT_ROOT"
