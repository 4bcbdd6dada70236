#!/bin/sh
# Stage-2 path counters by hand, on a KVM/arm64 host (the virtual board or a
# real board): the same kprobes and hist triggers armfleet's jobs arm
# (migrate-stress/src/stage2.rs), so that figures are comparable, plus a
# time-ordered record of block maps and memslot commits to tell block maps
# made after dirty logging stopped from the others. busybox sh is enough.
# Runs ON the board, as root; from the controller:
#
#   ssh BOARD 'sh -s -- arm'              < agent/vboard/stage2-count.sh
#   ssh BOARD 'sh -s -- measure CMD ARG…' < agent/vboard/stage2-count.sh
#   ssh BOARD 'sh -s -- read'             < agent/vboard/stage2-count.sh
#   ssh BOARD 'sh -s -- disarm'           < agent/vboard/stage2-count.sh
#
# Commands:
#   arm       define the probes (group $S2_GROUP, default armfleet_count),
#             hist triggers, and enable the ring-buffer record
#   read      cumulative counters now (key=value lines)
#   phases    block maps from the ring buffer, split by dirty-logging phase
#   measure CMD…  read, run CMD, read: deltas, wall time, cycles (= dirty
#             logging switched off on a memslot: a FLAGS_ONLY commit that
#             clears KVM_MEM_LOG_DIRTY_PAGES), per minute and per cycle.
#             CMD's output goes to stderr. The ring buffer is cleared first.
#   disarm    remove everything this script armed
#
# Probes (each only if this kernel has the function; "absent"/"failed"
# otherwise, and its counters then print as "unknown"):
#   s2map   kvm_pgtable_stage2_map(pgt, addr, size, …)  hist keys=pgt,size
#           page_maps = size <= 4096, block_maps = size > 4096 (as stage2.rs)
#   s2perm  kvm_pgtable_stage2_relax_perms              hist keys=pgt
#   memslot kvm_arch_commit_memory_region(kvm, old, new, change)  hist keys=kvm
#           (extra fetch args, not in stage2.rs: change, and new->flags /
#           new->id at the 6.1 arm64 struct kvm_memory_slot offsets 208/212;
#           change 3 = KVM_MR_FLAGS_ONLY, flags bit 0 = KVM_MEM_LOG_DIRTY_PAGES)
#   s2tblk  __kvm_tlb_flush_vmid, keyed by caller (x30): the whole-VMID flush
#           that stage2_map_walk_table_pre (inlined into stage2_map_walker)
#           makes when a block map replaces a table, i.e. a block re-install
#           over the page table dirty logging left. Not in stage2.rs. VHE
#           only: in nVHE the flush runs at EL2 and cannot be probed.
# Differences from stage2.rs: hist size=4096 instead of 256 (the selftest
# makes a new VM, hence new pgt keys, every cycle; `read` prints Dropped),
# and the ring-buffer record (s2map filtered to size >= 2 MiB, memslot,
# s2tblk from stage2_map_walker).
set -u
T=/sys/kernel/tracing
[ -e $T/kprobe_events ] || T=/sys/kernel/debug/tracing
G="${S2_GROUP:-armfleet_count}"
E=$T/events/$G
BUF_KB="${S2_BUFFER_KB:-8192}"

die() { echo "stage2-count: ERROR: $*" >&2; exit 1; }
have() { grep -qw "$1" $T/available_filter_functions 2>/dev/null || grep -qw "$1" /proc/kallsyms; }

arm() {
	[ "$(id -u)" = 0 ] || die "needs root"
	[ -w $T/kprobe_events ] || die "no writable kprobe_events under /sys/kernel/tracing or /sys/kernel/debug/tracing"
	[ -d $E ] && disarm > /dev/null 2>&1
	echo 0 > $T/tracing_on
	echo "$BUF_KB" > $T/buffer_size_kb || echo "stage2-count: buffer_size_kb $BUF_KB refused" >&2
	: > $T/trace
	for p in \
		's2map|kvm_pgtable_stage2_map|pgt=%x0:u64 size=%x2:u64|pgt,size|size >= 2097152' \
		's2perm|kvm_pgtable_stage2_relax_perms|pgt=%x0:u64|pgt|' \
		'memslot|kvm_arch_commit_memory_region|kvm=%x0:u64 change=%x3:u32 flags=+208(%x2):u32 slot=+212(%x2):s16|kvm|*' \
		's2tblk|__kvm_tlb_flush_vmid|mmu=%x0:u64 caller=%x30:x64|caller.sym|*'; do
		name=${p%%|*}; r=${p#*|}; func=${r%%|*}; r=${r#*|}; args=${r%%|*}; r=${r#*|}; keys=${r%%|*}; filt=${r#*|}
		if ! have "$func"; then echo "absent=$name ($func)"; continue; fi
		if echo "p:$G/$name $func $args" >> $T/kprobe_events 2>/dev/null \
			&& echo "hist:keys=$keys:size=4096" > $E/$name/trigger 2>/dev/null; then
			echo "armed=$name ($func)"
			case "$filt" in
			'') ;; # hist only
			'*') echo 1 > $E/$name/enable ;;
			*) echo "$filt" > $E/$name/filter && echo 1 > $E/$name/enable ;;
			esac
		else
			echo "failed=$name ($func): $(tail -n 2 $T/error_log 2>/dev/null | tr '\n' ' ')"
		fi
	done
	# s2tblk into the ring buffer only when called from stage2_map_walker
	if [ -d $E/s2tblk ]; then
		# [start, next symbol) of stage2_map_walker
		range=$(awk 'f {print $1; exit} $3 == "stage2_map_walker" {printf "%s ", $1; f = 1}' /proc/kallsyms)
		lo=${range%% *}; hi=${range#* }
		if [ -n "$lo" ] && [ -n "$hi" ] && [ "$lo" != "$hi" ]; then
			echo "caller >= 0x$lo && caller < 0x$hi" > $E/s2tblk/filter \
				|| echo "stage2-count: s2tblk filter refused; the ring buffer records every VMID flush" >&2
		fi
	fi
	echo 1 > $T/tracing_on
}

# hist SUM: sum of hitcounts in $E/$1/hist whose line matches awk condition $2
hsum() {
	[ -r $E/$1/hist ] || { echo unknown; return; }
	awk "/hitcount:/ { if ($2) { for (i = 1; i <= NF; i++) if (\$i == \"hitcount:\") s += \$(i+1) } } END { print s + 0 }" $E/$1/hist
}
sz='match($0, /size: *[0-9]+/) && (substr($0, RSTART + 5) + 0)'
read_counters() {
	echo "page_maps=$(hsum s2map "$sz <= 4096")"
	echo "block_maps=$(hsum s2map "$sz > 4096")"
	echo "block_maps_2m_plus=$(hsum s2map "$sz >= 2097152")"
	echo "perm_faults=$(hsum s2perm 1)"
	echo "memslot_commits=$(hsum memslot 1)"
	echo "block_over_table=$(hsum s2tblk '/stage2_map_walker/')"
	echo "vmid_flush_other=$(hsum s2tblk '!/stage2_map_walker/')"
	d=0
	for n in s2map s2perm memslot s2tblk; do
		[ -r $E/$n/hist ] && d=$((d + $(awk '/Dropped:/ {print $2}' $E/$n/hist)))
	done
	echo "hist_dropped=$d"
	echo "ring_overrun=$(awk '/^overrun:/ {s += $2} END {print s + 0}' $T/per_cpu/cpu*/stats)"
}

# Block maps (>= 2 MiB) and block-over-table flushes per phase, from the
# ring buffer: "logging" = between a FLAGS_ONLY commit that sets
# LOG_DIRTY_PAGES and the next one that clears it; "after" = from that
# clearing commit to the next memslot commit of any kind (or the end);
# "other" = the rest (e.g. the first mappings of a new VM).
phases() {
	cat $T/trace | awk '
	/ memslot: / {
		ch = -1; fl = -1
		if (match($0, /change=[0-9]+/)) ch = substr($0, RSTART + 7) + 0
		if (match($0, /flags=[0-9]+/)) fl = substr($0, RSTART + 6) + 0
		commits++
		if (ch == 3 && fl % 2 == 1) { if (ph != "logging") enables++; ph = "logging" }
		else if (ch == 3 && fl % 2 == 0) { if (ph == "logging") { disables++; ph = "after" } }
		else if (ph == "after") ph = "other"
		next
	}
	/ s2map: / { blk[ph == "" ? "other" : ph]++; next }
	/ s2tblk: / { tblk[ph == "" ? "other" : ph]++; next }
	END {
		printf "ring_memslot_commits=%d\nlog_enables=%d\nlog_disables=%d\n", commits, enables, disables
		printf "block_maps_other=%d\nblock_maps_during_logging=%d\nblock_maps_after_logging_stopped=%d\n", blk["other"], blk["logging"], blk["after"]
		printf "block_over_table_other=%d\nblock_over_table_during_logging=%d\nblock_over_table_after_logging_stopped=%d\n", tblk["other"], tblk["logging"], tblk["after"]
	}'
}

val() { sed -n "s/^$1=//p" "$2"; }

measure() {
	[ $# -gt 0 ] || die "measure needs a command"
	[ -d $E ] || die "not armed (run: arm)"
	: > $T/trace
	read_counters > /tmp/.s2c.before
	t0=$(cut -d' ' -f1 /proc/uptime)
	"$@" >&2
	rc=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	read_counters > /tmp/.s2c.after
	phases > /tmp/.s2c.phases
	cat /tmp/.s2c.phases
	cycles=$(val log_disables /tmp/.s2c.phases)
	echo "command_rc=$rc"
	echo "wall_s=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")"
	echo "cycles=$cycles"
	for k in page_maps block_maps block_maps_2m_plus perm_faults memslot_commits block_over_table vmid_flush_other hist_dropped ring_overrun; do
		a=$(val $k /tmp/.s2c.before); b=$(val $k /tmp/.s2c.after)
		if [ "$a" = unknown ] || [ "$b" = unknown ]; then echo "$k=unknown"; continue; fi
		awk "BEGIN { d = $b - $a; m = ($t1 - $t0) / 60; c = $cycles + 0;
			printf \"%s=%d per_min=%.1f per_cycle=%s\n\", \"$k\", d, (m > 0 ? d / m : 0), (c > 0 ? sprintf(\"%.1f\", d / c) : \"-\") }"
	done
	for k in block_maps_after_logging_stopped block_over_table_after_logging_stopped; do
		awk "BEGIN { d = $(val $k /tmp/.s2c.phases) + 0; m = ($t1 - $t0) / 60; c = $cycles + 0;
			printf \"%s per_min=%.1f per_cycle=%s\n\", \"$k\", (m > 0 ? d / m : 0), (c > 0 ? sprintf(\"%.1f\", d / c) : \"-\") }"
	done
	rm -f /tmp/.s2c.before /tmp/.s2c.after /tmp/.s2c.phases
	return $rc
}

disarm() {
	for n in s2map s2perm memslot s2tblk; do
		[ -d $E/$n ] || continue
		echo 0 > $E/$n/enable 2>/dev/null
		echo 0 > $E/$n/filter 2>/dev/null
		k=$(sed -n 's/^hist:keys=\([^:]*\):.*/\1/p' $E/$n/trigger | head -n1)
		[ -n "$k" ] && echo "!hist:keys=$k:size=4096" > $E/$n/trigger 2>/dev/null
		echo "-:$G/$n" >> $T/kprobe_events 2>/dev/null || echo "stage2-count: could not remove $G/$n" >&2
	done
	: > $T/trace
	echo 1408 > $T/buffer_size_kb 2>/dev/null
	[ -d $E ] && die "$E still exists" || echo disarmed
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
arm) arm ;;
read) [ -d $E ] || die "not armed"; read_counters ;;
phases) [ -d $E ] || die "not armed"; phases ;;
measure) measure "$@" ;;
disarm) disarm ;;
*) echo "usage: stage2-count.sh arm|read|phases|measure CMD...|disarm   (S2_GROUP=$G)" >&2; exit 2 ;;
esac
