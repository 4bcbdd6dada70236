/*
 * armfleet guest workload: keeps a share of guest RAM dirty with NON-ZERO
 * data and prints a heartbeat on the console.
 *
 *   dirty [-p PERCENT] [-i HEARTBEAT_MS]
 *
 * PERCENT is a share of MemTotal (capped so the guest keeps ~24 MiB free).
 * The first pass fills the whole buffer with pseudo-random non-zero words
 * (zero pages would migrate for free and leave nothing to cancel); every
 * later pass writes one word into each page, at a moving offset, so every
 * page is dirtied again as fast as the CPU allows.
 *
 * Output (one line each, to stdout = the guest console):
 *   ARMFLEET-DIRTY-START mib=<M> percent=<P>
 *   ARMFLEET-DIRTY-READY mib=<M>            after the first full fill
 *   ARMFLEET-HB <n> passes=<p>               every HEARTBEAT_MS
 *
 * The heartbeat comes from a forked child (forked before the buffer is
 * allocated, so no copy-on-write sharing); it dies with its parent.
 * Static build: aarch64-linux-gnu-gcc -static -O2 / gcc -static -O2.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct shared {
	volatile uint64_t passes;
};

static uint64_t meminfo_kib(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	uint64_t v = 0;
	size_t n = strlen(key);
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, key, n) == 0 && line[n] == ':') {
			v = strtoull(line + n + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void heartbeat(struct shared *sh, long interval_ms, pid_t parent)
{
	uint64_t n = 0;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	for (;;) {
		printf("ARMFLEET-HB %llu passes=%llu\n", (unsigned long long)n++,
		       (unsigned long long)sh->passes);
		fflush(stdout);
		sleep_ms(interval_ms);
	}
}

int main(int argc, char **argv)
{
	long percent = 50, interval_ms = 100;
	int opt;
	while ((opt = getopt(argc, argv, "p:i:")) != -1) {
		switch (opt) {
		case 'p': percent = atol(optarg); break;
		case 'i': interval_ms = atol(optarg); break;
		default:
			fprintf(stderr, "usage: dirty [-p PERCENT] [-i HEARTBEAT_MS]\n");
			return 2;
		}
	}
	if (percent < 0) percent = 0;
	if (percent > 95) percent = 95;
	if (interval_ms < 10) interval_ms = 10;

	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		perror("dirty: mmap shared");
		return 1;
	}
	sh->passes = 0;
	setvbuf(stdout, NULL, _IOLBF, 0);

	pid_t parent = getpid();
	pid_t child = fork();
	if (child == 0)
		heartbeat(sh, interval_ms, parent);
	if (child < 0)
		perror("dirty: fork (no heartbeat)");

	uint64_t total = meminfo_kib("MemTotal") * 1024;
	uint64_t avail = meminfo_kib("MemAvailable") * 1024;
	uint64_t want = total / 100 * (uint64_t)percent;
	uint64_t reserve = 24ull << 20;
	if (avail > reserve && want > avail - reserve)
		want = avail - reserve;
	want &= ~((uint64_t)(1 << 20) - 1); /* whole MiB */
	printf("ARMFLEET-DIRTY-START mib=%llu percent=%ld\n",
	       (unsigned long long)(want >> 20), percent);
	if (want == 0) {
		printf("ARMFLEET-DIRTY-READY mib=0\n");
		for (;;)
			pause();
	}

	uint64_t *buf = mmap(NULL, want, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("dirty: mmap buffer");
		for (;;)
			pause();
	}
	size_t words = want / sizeof(uint64_t);
	size_t page_words = 4096 / sizeof(uint64_t);

	/* Pass 0: every word non-zero (xorshift64 never yields 0). */
	uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)parent;
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = x;
	}
	sh->passes = 1;
	printf("ARMFLEET-DIRTY-READY mib=%llu\n", (unsigned long long)(want >> 20));

	for (uint64_t pass = 1;; pass++) {
		size_t off = pass % page_words;
		uint64_t v = (pass * 0x9E3779B97F4A7C15ull) | 1;
		for (size_t i = off; i < words; i += page_words)
			buf[i] = v ^ i;
		sh->passes = pass + 1;
	}
}
