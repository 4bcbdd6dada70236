#!/bin/bash
# Build the kernel's own KVM selftests (tools/testing/selftests/kvm) for
# arm64, statically linked, from Debian's linux-source-6.1 at the exact
# version of the virtual board's kernel, with Debian's aarch64 cross
# compiler. They run on the board's minimal initramfs (no libc there for
# them): copy one over with `ssh ... 'cat > /tmp/kpt' < FILE`. See
# README.md beside this file ("A peer: the kernel's kvm_page_table_test").
#
#   agent/vboard/selftest.sh [TEST...]     (default: kvm_page_table_test)
#
# TEST is a name from the 6.1 kvm selftests Makefile's TEST_GEN_PROGS_aarch64
# (e.g. kvm_page_table_test dirty_log_test dirty_log_perf_test).
#
# Output:  ${ARMFLEET_SELFTEST_DIR:-$HOME/.cache/armfleet/vboard/selftest}/
#            TEST (static aarch64 ELF), TEST.c (its source, for reading), stamp
#
# Kernel source version: the `kernel=` line of the board image's stamp
# (${ARMFLEET_VBOARD_DIR:-~/.cache/armfleet/vboard}/stamp, e.g.
# linux-image-6.1.0-57-arm64=6.1.192-3 -> linux-source-6.1=6.1.192-3), else
# the guest's stamp, else apt's candidate; ARMFLEET_SELFTEST_SRC_VERSION=V
# overrides it.
#
# Idempotent: stamp records the sha256 of this script, the source version,
# the cross compiler's version and the tests; when it matches, nothing is
# downloaded or built, and apt is not consulted.
#
# What it changes on the host:
#   * apt-get install --no-install-recommends (only when missing; needs root):
#       gcc-aarch64-linux-gnu libc6-dev-arm64-cross make xz-utils gcc libc6-dev
#   * apt-get download of linux-source-6.1 (139 MB .deb) into a temporary
#     directory under the output dir (never installed); unpacked (1.5 GB),
#     `make ARCH=arm64 headers` (in-tree usr/include: headers_install
#     would need rsync), the tests built with LDFLAGS=-static, then the
#     whole tree is deleted. About 40 s.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VBOARD_DIR="${ARMFLEET_VBOARD_DIR:-$HOME/.cache/armfleet/vboard}"
GUEST_STAMP="${ARMFLEET_GUEST_DIR:-$HOME/.cache/armfleet/guest}/arm64/stamp"
OUT="${ARMFLEET_SELFTEST_DIR:-$VBOARD_DIR/selftest}"
CROSS=aarch64-linux-gnu-
SRC_PKG=linux-source-6.1

log() { echo "[vboard-selftest] $*" >&2; }
die() { echo "[vboard-selftest] ERROR: $*" >&2; exit 1; }

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(kvm_page_table_test)
for t in "${tests[@]}"; do
	case "$t" in
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*[!A-Za-z0-9_/-]* | "" | /* | *..*) die "bad test name '$t'" ;;
	esac
done

# ---- the source version -------------------------------------------------------------
src_ver="${ARMFLEET_SELFTEST_SRC_VERSION:-}"
src_from="ARMFLEET_SELFTEST_SRC_VERSION"
if [ -z "$src_ver" ]; then
	for s in "$VBOARD_DIR/stamp" "$GUEST_STAMP"; do
		if [ -f "$s" ]; then
			src_ver="$(sed -n 's/^kernel=linux-image-[^=]*=//p' "$s" | head -n1)"
			src_from="$s"
			[ -z "$src_ver" ] || break
		fi
	done
fi
if [ -z "$src_ver" ]; then
	command -v apt-cache > /dev/null || die "no board stamp ($VBOARD_DIR/stamp) and no apt-cache: set ARMFLEET_SELFTEST_SRC_VERSION"
	src_ver="$(apt-cache policy "$SRC_PKG" | awk '/^  Candidate:/ {print $2}')"
	src_from="apt candidate"
	[ -n "$src_ver" ] && [ "$src_ver" != "(none)" ] \
		|| die "no board stamp ($VBOARD_DIR/stamp; run agent/vboard/build.sh) and apt knows no $SRC_PKG (apt-get update?)"
	log "WARNING: no board stamp; building against apt's candidate $SRC_PKG=$src_ver, which may not match the board's kernel"
fi
case "$src_ver" in 6.1.*) ;; *) die "$SRC_PKG version '$src_ver' (from $src_from) is not a 6.1 version" ;; esac

# ---- fast path ------------------------------------------------------------------------
cc_ver="$("${CROSS}gcc" --version 2> /dev/null | head -n1 || true)"
want_stamp="$(printf 'inputs=%s\nsource=%s=%s\ncc=%s\ntests=%s\n' \
	"$(sha256sum < "$HERE/selftest.sh" | cut -c1-16)" "$SRC_PKG" "$src_ver" "$cc_ver" "${tests[*]}")"
have_all=1
for t in "${tests[@]}"; do [ -x "$OUT/$(basename "$t")" ] || have_all=0; done
if [ -n "$cc_ver" ] && [ "$have_all" = 1 ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$want_stamp" ]; then
	log "up to date ($OUT: ${tests[*]}; $SRC_PKG=$src_ver)"
	exit 0
fi

# ---- host tools --------------------------------------------------------------------------
missing=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross make xz-utils gcc libc6-dev; do
	dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]} (run as root to install them, or: sudo apt-get install --no-install-recommends ${missing[*]})"
	log "apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
		|| die "apt-get install ${missing[*]} failed (apt-get update?)"
fi
cc_ver="$("${CROSS}gcc" --version | head -n1)"
want_stamp="$(printf 'inputs=%s\nsource=%s=%s\ncc=%s\ntests=%s\n' \
	"$(sha256sum < "$HERE/selftest.sh" | cut -c1-16)" "$SRC_PKG" "$src_ver" "$cc_ver" "${tests[*]}")"
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || die "no static arm64 libc (/usr/aarch64-linux-gnu/lib/libc.a): libc6-dev-arm64-cross is broken"

# ---- source ----------------------------------------------------------------------------------
mkdir -p "$OUT"
tmp="$OUT/.build"
rm -rf "$tmp"
mkdir -p "$tmp/deb" "$tmp/x"
trap 'rm -rf "$tmp"' EXIT
log "apt-get download $SRC_PKG=$src_ver (from $src_from)"
(cd "$tmp/deb" && apt-get download -q "$SRC_PKG=$src_ver" 2>&1 \
	| grep -v -e 'Download is performed unsandboxed' -e '^Get:' -e '^Fetched' >&2) || true
deb="$(find "$tmp/deb" -name "${SRC_PKG}_*.deb" | head -n1)"
[ -n "$deb" ] || die "apt-get download $SRC_PKG=$src_ver fetched nothing (is that version still in the archive? apt-cache policy $SRC_PKG; apt-get update; or set ARMFLEET_SELFTEST_SRC_VERSION)"
dpkg -x "$deb" "$tmp/x"
tarball="$(find "$tmp/x/usr/src" -maxdepth 1 -name "$SRC_PKG.tar.*" | head -n1)"
[ -n "$tarball" ] || die "$deb holds no /usr/src/$SRC_PKG.tar.*"
rm -f "$deb"
log "unpacking $(basename "$tarball")"
tar -xf "$tarball" -C "$tmp"
rm -rf "$tmp/x"
src="$tmp/$SRC_PKG"
kvm="$src/tools/testing/selftests/kvm"
[ -f "$kvm/Makefile" ] || die "no tools/testing/selftests/kvm/Makefile in $SRC_PKG=$src_ver"

# ---- build -----------------------------------------------------------------------------------
log "make ARCH=arm64 headers"
make -C "$src" -s ARCH=arm64 CROSS_COMPILE="$CROSS" headers >&2 || die "make ARCH=arm64 headers failed"
[ -f "$src/usr/include/asm/kvm.h" ] || die "make headers left no usr/include/asm/kvm.h"
for t in "${tests[@]}"; do
	grep -qE "^TEST_GEN_PROGS_aarch64 \+= $t\$" "$kvm/Makefile" \
		|| die "$t is not an aarch64 test in $SRC_PKG=$src_ver's kvm selftests Makefile ($(sed -n 's/^TEST_GEN_PROGS_aarch64 += //p' "$kvm/Makefile" | tr '\n' ' '))"
done
log "building ${tests[*]} (static, ${CROSS}gcc: $cc_ver)"
# LDFLAGS from the environment: the Makefile's own `LDFLAGS += -pthread -no-pie` appends to it.
(cd "$kvm" && LDFLAGS=-static make -j"$(nproc)" ARCH=arm64 CROSS_COMPILE="$CROSS" "${tests[@]/#/$kvm/}" >&2) \
	|| die "building ${tests[*]} failed"
for t in "${tests[@]}"; do
	b="$kvm/$t"
	[ -f "$b" ] || die "the build left no $t"
	"${CROSS}readelf" -h "$b" | grep -q 'Machine:.*AArch64' || die "$t is not an AArch64 ELF"
	if "${CROSS}readelf" -l "$b" | grep -q 'Requesting program interpreter'; then die "$t is not statically linked"; fi
	install -m 0755 "$b" "$OUT/$(basename "$t").new"
	mv -f "$OUT/$(basename "$t").new" "$OUT/$(basename "$t")"
	install -m 0644 "$kvm/$t.c" "$OUT/$(basename "$t").c"
done
printf '%s\n' "$want_stamp" > "$OUT/stamp"
log "done: $(for t in "${tests[@]}"; do printf '%s (%s) ' "$OUT/$(basename "$t")" "$(du -h "$OUT/$(basename "$t")" | cut -f1)"; done); $SRC_PKG=$src_ver"
