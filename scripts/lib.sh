# Shared by scripts/test and scripts/demo: install what armfleet needs on a
# fresh Debian machine (as root), or say exactly what is missing.

say() { echo "[armfleet] $*" >&2; }

apt_updated=0
apt_install() {
	# apt_install pkg...: installs the packages that are not installed yet.
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
		say "MISSING Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
		return 1
	fi
	if [ $apt_updated = 0 ]; then
		say "apt-get update"
		apt-get update -q >/dev/null
		apt_updated=1
	fi
	say "apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_postgres() {
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then return 0; fi
	if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then return 0; fi
	apt_install postgresql || { say "PostgreSQL server binaries (initdb, pg_ctl) are missing; or set DATABASE_URL"; return 1; }
}

ensure_rust() {
	command -v cargo >/dev/null || { say "cargo is missing: install Rust (rustup) first"; return 1; }
}

# Builds live outside the clone so repeated runs (and CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/armfleet-target}"
