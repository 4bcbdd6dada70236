#!/bin/bash
# Build the armfleet "virtual arm64 board": Debian's arm64 kernel + an
# initramfs holding busybox, OpenSSH's sshd and qemu-system-aarch64 (arm64
# builds, Debian bookworm), booted by an x86 host's
#   qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max -accel tcg
# so that the kernel starts at EL2 with KVM and L2 guests run under real
# KVM/arm64 inside it. See README.md beside this file.
#
#   agent/vboard/build.sh [arm64|all]      (default: all = arm64, the only board)
#
# Output:  ${ARMFLEET_VBOARD_DIR:-$HOME/.cache/armfleet/vboard}/{vmlinuz,initrd.gz,stamp}
#
# It first runs agent/guest/build.sh arm64 and embeds that L2 guest as
# /guest/arm64/{vmlinuz,initrd.gz}; the board's own kernel is the same
# Debian kernel (the guest's vmlinuz, copied).
#
# Idempotent: stamp records every input (sha256 of build.sh, init,
# sshd_config and pkill, the guest's stamp, and the exact version of every
# .deb used); when it matches, nothing is downloaded or rebuilt. The fast
# path does not consult apt; ARMFLEET_VBOARD_REFRESH=1 re-resolves package
# versions (a newer qemu/openssh/library then triggers a rebuild).
#
# What it changes on the host (needs root unless the stamp is current):
#   * apt-get install --no-install-recommends of the tools it lacks:
#       cpio, binutils-aarch64-linux-gnu, xz-utils, zstd
#   * downloads (apt-get download, into the output dir, deleted afterwards,
#     never installed): qemu-system-arm:arm64, openssh-server:arm64,
#     openssh-client:arm64 (ssh-keygen), busybox-static:arm64, the guest's
#     linux-image-6.1.0-NN-arm64 (modules), and every lib*:arm64 package in
#     their dependency closure; only the DT_NEEDED closure of
#     sshd, ssh-keygen and qemu-system-aarch64 is copied into the image.
#
# The initramfs is reproducible: files sorted, mtimes clamped to 0,
# cpio --reproducible -H newc -R 0:0, gzip -n; then zero-padded to a
# multiple of 4 bytes so that an uncompressed newc cpio can be appended
# (the kernel only accepts a following uncompressed archive 4-byte aligned).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GUEST_BUILD="$HERE/../guest/build.sh"
OUT="${ARMFLEET_VBOARD_DIR:-$HOME/.cache/armfleet/vboard}"
GUEST_DIR="${ARMFLEET_GUEST_DIR:-$HOME/.cache/armfleet/guest}/arm64"
WHAT="${1:-all}"

# Kernel modules the board loads at boot (their dependencies are added):
# virtio-net-pci networking.
MODULES=(virtio_pci virtio_net)
# Binaries copied from the arm64 packages (path in the package = path in the image).
BINARIES=(usr/sbin/sshd usr/bin/ssh-keygen usr/bin/qemu-system-aarch64)
# Applets the init script / the controller rely on; the build fails if the
# busybox binary lacks one (pkill/pgrep come from the pkill shim).
APPLETS_REQUIRED=(sh mount umount ip ifconfig route cat kill ps killall sleep usleep mkdir rm ls
	grep sed awk dmesg insmod modprobe lsmod hostname uname head tail echo seq xargs setsid nc
	timeout cp chmod ln tr cut sort wc mknod sync env test printf)

log() { echo "[vboard-build] $*" >&2; }
die() { echo "[vboard-build] ERROR: $*" >&2; exit 1; }

case "$WHAT" in
all | arm64 | aarch64) ;;
*) die "usage: $0 [arm64|all]   (the board is arm64 only)" ;;
esac

need_root() {
	[ "$(id -u)" = 0 ] || die "$* needs root (run: sudo $0 $WHAT)"
}

apt_ensure() {
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

# ---- 1. the L2 guest (and the kernel) --------------------------------------------
log "guest: agent/guest/build.sh arm64"
"$GUEST_BUILD" arm64
for f in vmlinuz initrd.gz stamp; do
	[ -f "$GUEST_DIR/$f" ] || die "guest build left no $GUEST_DIR/$f"
done
guest_hash="$(sha256sum < "$GUEST_DIR/stamp" | cut -c1-16)"
# kernel=linux-image-6.1.0-NN-arm64=VERSION
kline="$(sed -n 's/^kernel=//p' "$GUEST_DIR/stamp")"
kpkg="${kline%%=*}"
kver="${kline#*=}"
[ -n "$kpkg" ] && [ -n "$kver" ] || die "no kernel= line in $GUEST_DIR/stamp"

inputs_hash="$(cat "$HERE/build.sh" "$HERE/init" "$HERE/sshd_config" "$HERE/pkill" | sha256sum | cut -c1-16)"
mkdir -p "$OUT"
if [ -f "$OUT/stamp" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] \
	&& grep -qx "inputs=$inputs_hash" "$OUT/stamp" && grep -qx "guest=$guest_hash" "$OUT/stamp" \
	&& [ "${ARMFLEET_VBOARD_REFRESH:-0}" != 1 ]; then
	log "up to date ($OUT, $(grep '^pkg=qemu-system-arm=' "$OUT/stamp" | cut -d= -f2-))"
	exit 0
fi

need_root "rebuilding the vboard image ($OUT/stamp is missing or stale)"
apt_ensure cpio binutils-aarch64-linux-gnu xz-utils zstd
dpkg --print-foreign-architectures | grep -qx arm64 || die "arm64 is not a dpkg foreign architecture (the guest build should have added it)"
READELF=aarch64-linux-gnu-readelf
OBJCOPY=aarch64-linux-gnu-objcopy

# ---- 2. resolve the package set and versions -------------------------------------------
TOP_PKGS=(qemu-system-arm openssh-server openssh-client busybox-static)
log "resolving the arm64 dependency closure of ${TOP_PKGS[*]}"
mapfile -t lib_pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances "${TOP_PKGS[@]/%/:arm64}" \
	| grep -E '^(lib|zlib1g)[^ <>]*:arm64$' | sed 's/:arm64$//' | LC_ALL=C sort -u)
[ ${#lib_pkgs[@]} -gt 20 ] || die "apt-cache depends found only ${#lib_pkgs[@]} library packages (apt-get update?)"
all_pkgs=("${TOP_PKGS[@]}" "${lib_pkgs[@]}")
declare -A ver
while read -r name v; do ver[$name]="$v"; done < <(apt-cache policy "${all_pkgs[@]/%/:arm64}" \
	| awk '/^[^ ].*:$/ {p=$1; sub(/:arm64:$/, "", p); sub(/:$/, "", p)} /^  Candidate:/ {print p, $2}')
pkg_lines=()
for p in "${all_pkgs[@]}"; do
	v="${ver[$p]:-}"
	[ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate for $p:arm64"
	pkg_lines+=("pkg=$p=$v")
done
want_stamp="$(printf 'inputs=%s\nguest=%s\nkernel=%s=%s\n' "$inputs_hash" "$guest_hash" "$kpkg" "$kver"
	printf '%s\n' "${pkg_lines[@]}" | LC_ALL=C sort)"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$want_stamp" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ]; then
	log "up to date (packages unchanged)"
	exit 0
fi

# ---- 3. download and unpack ------------------------------------------------------------------
log "building into $OUT"
tmp="$OUT/.build"
rm -rf "$tmp"
mkdir -p "$tmp/debs" "$tmp/x" "$tmp/root"
specs=("$kpkg:arm64=$kver")
for p in "${all_pkgs[@]}"; do specs+=("$p:arm64=${ver[$p]}"); done
log "apt-get download: ${#specs[@]} packages"
# _apt cannot write into root-owned dirs; download as-is (warning is harmless).
(cd "$tmp/debs" && apt-get download -q "${specs[@]}" 2>&1 \
	| grep -v -e 'Download is performed unsandboxed' -e '^Get:' >&2) || true
n_debs="$(find "$tmp/debs" -name '*.deb' | wc -l)"
[ "$n_debs" = "${#specs[@]}" ] || die "apt-get download fetched $n_debs of ${#specs[@]} packages"
log "unpacking $n_debs packages"
for d in "$tmp"/debs/*.deb; do dpkg -x "$d" "$tmp/x"; done
x="$tmp/x"
r="$tmp/root"

# ---- 4. assemble the root --------------------------------------------------------------------
mkdir -p "$r"/{bin,usr/bin,usr/sbin,lib/modules,etc/ssh,etc/armfleet,dev,proc,sys,run,tmp,root,var,mnt,guest/arm64}
ln -s bin "$r/sbin"
ln -s ../run "$r/var/run"
chmod 0700 "$r/root"
chmod 1777 "$r/tmp"

# busybox + one symlink per applet, all in /bin (/sbin -> bin). The applet
# list is read from the binary's own name table ("[\0[[\0acpid\0...").
cp "$x/bin/busybox" "$r/bin/busybox"
off="$(LC_ALL=C grep -m1 -obUaP '\x00\[\x00\[\[\x00' "$r/bin/busybox" | head -n1 | cut -d: -f1)"
[ -n "$off" ] || die "cannot find the applet table in busybox"
mapfile -t applets < <(tail -c +"$((off + 2))" "$r/bin/busybox" | head -c 65536 | tr '\0' '\n' \
	| sed '/^$/q' | grep -E '^[][a-z0-9_.-]+$')
[ ${#applets[@]} -gt 100 ] || die "busybox applet table looks wrong (${#applets[@]} names)"
for a in "${applets[@]}"; do
	[ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
done
for a in "${APPLETS_REQUIRED[@]}"; do
	[ -L "$r/bin/$a" ] || die "busybox-static:arm64 has no '$a' applet"
done
ln -s /bin/busybox "$r/usr/bin/env"
for a in pkill pgrep; do
	[ -e "$r/bin/$a" ] || install -m 0755 "$HERE/pkill" "$r/bin/$a"
done

# sshd, ssh-keygen, qemu-system-aarch64 and exactly their shared libraries
for b in "${BINARIES[@]}"; do
	[ -f "$x/$b" ] || die "no /$b in the unpacked packages"
	install -m 0755 "$x/$b" "$r/$b"
	interp="$($READELF -l "$x/$b" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')"
	[ "$interp" = /lib/ld-linux-aarch64.so.1 ] || die "$b: unexpected interpreter '$interp'"
	if $READELF -d "$x/$b" | grep -qE '\((RPATH|RUNPATH)\)'; then die "$b has an RPATH/RUNPATH (not handled)"; fi
done
libdirs=(lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib usr/lib)
declare -A seen=()
queue=("${BINARIES[@]}")
libs=()
while [ ${#queue[@]} -gt 0 ]; do
	f="${queue[0]}"
	queue=("${queue[@]:1}")
	for so in $($READELF -d "$x/$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		[ -z "${seen[$so]:-}" ] || continue
		found=
		for d in "${libdirs[@]}"; do
			if [ -e "$x/$d/$so" ]; then found="$d/$so"; break; fi
		done
		[ -n "$found" ] || die "$so (needed by /$f) is in none of the downloaded packages"
		seen[$so]="$found"
		libs+=("$found")
		queue+=("$found")
	done
done
for l in "${libs[@]}"; do
	mkdir -p "$r/$(dirname "$l")"
	cp -L "$x/$l" "$r/$l"
	chmod 0755 "$r/$l"
done
[ -f "$r/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" ] || die "ld-linux-aarch64.so.1 not in the closure"
ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$r/lib/ld-linux-aarch64.so.1"
log "${#BINARIES[@]} binaries, ${#libs[@]} shared libraries"

# kernel modules, decompressed, with a load order (dependencies first)
kmod_root="$(ls -d "$x"/lib/modules/*/ | head -n1)"
kmod_root="${kmod_root%/}"
krel="$(basename "$kmod_root")"
[ -d "$kmod_root/kernel" ] || die "no modules in $kpkg"
declare -A mod_done=()
mod_file() { # mod_file name : the module's file (name with _ or -)
	local n1="$1" n2="${1//_/-}"
	find "$kmod_root/kernel" \( -name "$n1.ko" -o -name "$n1.ko.xz" -o -name "$n1.ko.zst" -o -name "$n1.ko.gz" \
		-o -name "$n2.ko" -o -name "$n2.ko.xz" -o -name "$n2.ko.zst" -o -name "$n2.ko.gz" \) | LC_ALL=C sort | head -n1
}
add_mod() {
	local m="$1" f deps d
	[ -z "${mod_done[$m]:-}" ] || return 0
	mod_done[$m]=1
	f="$(mod_file "$m")"
	if [ -z "$f" ]; then
		if grep -qE "/(${m}|${m//_/-})\.ko" "$kmod_root/modules.builtin"; then
			log "module $m: built in"
			return 0
		fi
		die "kernel module $m: not found in $kpkg"
	fi
	case "$f" in
	*.ko.xz) xz -dc "$f" > "$r/lib/modules/$m.ko" ;;
	*.ko.zst) zstd -q -dc "$f" > "$r/lib/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$f" > "$r/lib/modules/$m.ko" ;;
	*) cp "$f" "$r/lib/modules/$m.ko" ;;
	esac
	$OBJCOPY -O binary -j .modinfo "$r/lib/modules/$m.ko" "$tmp/modinfo"
	deps="$(tr '\0' '\n' < "$tmp/modinfo" | sed -n 's/^depends=//p' | tr ',' ' ')"
	for d in $deps; do add_mod "$d"; done
	echo "$m" >> "$r/lib/modules/load.list"
}
: > "$r/lib/modules/load.list"
for m in "${MODULES[@]}"; do add_mod "$m"; done
log "modules ($krel): $(tr '\n' ' ' < "$r/lib/modules/load.list")"

# the L2 guest and the board kernel
guest_krel="$(sed -n 's/^kernel=linux-image-\(.*\)=.*/\1/p' "$GUEST_DIR/stamp")"
[ "$guest_krel" = "$krel" ] || die "module tree $krel does not match the guest kernel $guest_krel"
cmp -s "$GUEST_DIR/vmlinuz" "$x/boot/vmlinuz-$krel" || die "$GUEST_DIR/vmlinuz is not $kpkg's vmlinuz"
install -m 0644 "$GUEST_DIR/vmlinuz" "$r/guest/arm64/vmlinuz"
install -m 0644 "$GUEST_DIR/initrd.gz" "$r/guest/arm64/initrd.gz"

# /etc and /init
cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privilege separation:/run/sshd:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat > "$r/etc/group" <<'EOF'
root:x:0:
tty:x:5:
kvm:x:104:
nogroup:x:65534:
EOF
cat > "$r/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files
EOF
cat > "$r/etc/hosts" <<'EOF'
127.0.0.1 localhost vboard
::1 localhost ip6-localhost ip6-loopback
EOF
cat > "$r/etc/profile" <<'EOF'
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PS1='\h:\w\$ '
EOF
echo vboard > "$r/etc/hostname"
install -m 0644 "$HERE/sshd_config" "$r/etc/ssh/sshd_config"
install -m 0755 "$HERE/init" "$r/init"
chmod 0755 "$r/etc/armfleet"

# ---- 5. pack ------------------------------------------------------------------------------------
log "packing initramfs"
find "$r" -exec touch -h -d @0 {} +
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet --reproducible -o -H newc -R 0:0) \
	| gzip -n -9 > "$tmp/initrd.gz"
size="$(stat -c %s "$tmp/initrd.gz")"
pad=$(((4 - size % 4) % 4))
[ "$pad" = 0 ] || head -c "$pad" /dev/zero >> "$tmp/initrd.gz"

install -m 0644 "$GUEST_DIR/vmlinuz" "$OUT/vmlinuz.new"
install -m 0644 "$tmp/initrd.gz" "$OUT/initrd.gz.new"
mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv -f "$OUT/initrd.gz.new" "$OUT/initrd.gz"
printf '%s\n' "$want_stamp" > "$OUT/stamp"
rm -rf "$tmp"
log "done: $OUT/vmlinuz ($(du -h "$OUT/vmlinuz" | cut -f1)), $OUT/initrd.gz ($(du -h "$OUT/initrd.gz" | cut -f1)); $kpkg $kver, qemu ${ver[qemu-system-arm]}, openssh ${ver[openssh-server]}"
