/*
 * armfleet guest workload: keeps a share of guest RAM dirty with NON-ZERO
 * data from several threads, checks what it wrote, and prints a heartbeat
 * on the console.
 *
 *   dirty [-p PERCENT] [-i HEARTBEAT_MS] [-t THREADS] [-s SEED] [-v]
 *
 * PERCENT is a share of MemTotal (capped so the guest keeps ~24 MiB free).
 * THREADS (0: one per online CPU, i.e. per vCPU) split the buffer into
 * page-aligned slices, one each. The first pass fills every word with
 * pseudo-random non-zero data (zero pages would migrate for free and leave
 * nothing to cancel). Every later pass writes one word into each page of
 * the slice, visiting pages in a seeded order (start and stride drawn from
 * SEED and the thread number, so a run can be repeated), at an offset and
 * with a value that are functions of (seed, thread, page, generation).
 *
 * Why: after a cancelled migration, KVM re-installs stage-2 block mappings
 * when the guest faults on memory that dirty logging left mapped by pages;
 * writes from every vCPU, all over RAM, keep those faults coming during
 * and after each cancel.
 *
 * With -v, every 4th pass each thread re-reads the last word it wrote in
 * every page of its slice. A mismatch means guest memory did not keep what
 * the guest wrote: a finding of its own (e.g. a stale stage-2 translation
 * pointing at the wrong page), reported as
 *   ARMFLEET-CORRUPTION thread=<t> page=<n> offset=0x<byte offset in buffer>
 *       expected=0x<v> found=0x<v> pass=<p>
 * (at most 8 lines per thread; the host fails the job on the first).
 * SIGUSR1 makes thread 0 flip one bit it just wrote (fault injection for
 * tests of that path: init sends it on ARMFLEET-CORRUPT).
 *
 * Output (one line each, to stdout = the guest console):
 *   ARMFLEET-DIRTY-START mib=<M> percent=<P> threads=<T> seed=<S> verify=<0|1>
 *   ARMFLEET-DIRTY-READY mib=<M>            after the first full fill
 *   ARMFLEET-HB <n> passes=<p>               every HEARTBEAT_MS
 *
 * The heartbeat comes from a forked child (forked before the buffer is
 * allocated, so no copy-on-write sharing); it dies with its parent.
 * Static build: aarch64-linux-gnu-gcc -static -O2 -pthread / gcc ...
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define PAGE_WORDS (PAGE / sizeof(uint64_t))
#define MAX_REPORTS 8

static volatile sig_atomic_t corrupt_requested;

static void on_usr1(int sig)
{
	(void)sig;
	corrupt_requested = 1;
}

struct shared {
	volatile uint64_t passes;
};

struct slice {
	int thread;
	uint64_t seed;
	int verify;
	uint64_t *base;   /* first word of the slice */
	size_t pages;
	size_t first_page; /* index of the slice's first page in the buffer */
	struct shared *sh;
	pthread_barrier_t *filled;
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

/* splitmix64: a good 64-bit mix; never used where 0 would matter
 * without forcing a bit on. */
static uint64_t mix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* The word a page holds at generation `gen`: where, and what (non-zero). */
static size_t word_at(const struct slice *s, size_t page, uint32_t gen)
{
	return mix(s->seed ^ ((uint64_t)page << 20) ^ gen) % PAGE_WORDS;
}

static uint64_t value_at(const struct slice *s, size_t page, uint32_t gen)
{
	return mix(s->seed * 31 + ((uint64_t)s->thread << 48) + ((uint64_t)page << 16) + gen) | 1;
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

static void *dirty_thread(void *arg)
{
	struct slice *s = arg;
	uint32_t *gen = calloc(s->pages ? s->pages : 1, sizeof *gen);
	int reports = 0;
	if (!gen) {
		perror("dirty: calloc generations");
		return NULL;
	}
	/* Pass 0: every word non-zero. */
	uint64_t x = mix(s->seed ^ (uint64_t)s->thread) | 1;
	for (size_t i = 0; i < s->pages * PAGE_WORDS; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		s->base[i] = x;
	}
	/* Generation 0's word is what pass 0 left there. */
	for (size_t p = 0; p < s->pages; p++) {
		size_t w = word_at(s, p, 0);
		s->base[p * PAGE_WORDS + w] = value_at(s, p, 0);
	}
	pthread_barrier_wait(s->filled);

	uint64_t rng = mix(s->seed + 0x5151 * (uint64_t)(s->thread + 1));
	for (uint64_t pass = 1;; pass++) {
		size_t n = s->pages;
		if (n == 0) {
			sleep_ms(1000);
			continue;
		}
		/* A seeded visiting order: start + k*stride (mod n), stride
		 * coprime with n, so every page is written exactly once. */
		rng = mix(rng);
		size_t start = rng % n;
		rng = mix(rng);
		size_t stride = n > 1 ? 1 + rng % (n - 1) : 1;
		while (gcd(stride, n) != 1)
			stride = stride + 1 < n ? stride + 1 : 1;
		size_t p = start;
		for (size_t k = 0; k < n; k++) {
			uint32_t g = ++gen[p];
			s->base[p * PAGE_WORDS + word_at(s, p, g)] = value_at(s, p, g);
			p += stride;
			if (p >= n)
				p -= n;
		}
		if (s->verify && pass % 4 == 0 && reports < MAX_REPORTS) {
			if (s->thread == 0 && corrupt_requested) {
				corrupt_requested = 0;
				s->base[word_at(s, 0, gen[0])] ^= 1ull << 40;
			}
			for (size_t q = 0; q < n && reports < MAX_REPORTS; q++) {
				size_t w = word_at(s, q, gen[q]);
				uint64_t want = value_at(s, q, gen[q]);
				uint64_t got = s->base[q * PAGE_WORDS + w];
				if (got != want) {
					reports++;
					printf("ARMFLEET-CORRUPTION thread=%d page=%zu offset=0x%llx expected=0x%016llx found=0x%016llx pass=%llu\n",
					       s->thread, s->first_page + q,
					       (unsigned long long)((s->first_page + q) * PAGE + w * 8),
					       (unsigned long long)want, (unsigned long long)got,
					       (unsigned long long)pass);
					fflush(stdout);
				}
			}
		}
		__atomic_add_fetch(&s->sh->passes, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long percent = 50, interval_ms = 100, threads = 0;
	uint64_t seed = 1;
	int verify = 0, opt;
	while ((opt = getopt(argc, argv, "p:i:t:s:v")) != -1) {
		switch (opt) {
		case 'p': percent = atol(optarg); break;
		case 'i': interval_ms = atol(optarg); break;
		case 't': threads = atol(optarg); break;
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'v': verify = 1; break;
		default:
			fprintf(stderr, "usage: dirty [-p PERCENT] [-i HEARTBEAT_MS] [-t THREADS] [-s SEED] [-v]\n");
			return 2;
		}
	}
	if (percent < 0) percent = 0;
	if (percent > 95) percent = 95;
	if (interval_ms < 10) interval_ms = 10;
	if (threads <= 0) threads = sysconf(_SC_NPROCESSORS_ONLN);
	if (threads < 1) threads = 1;
	if (threads > 64) threads = 64;

	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		perror("dirty: mmap shared");
		return 1;
	}
	sh->passes = 0;
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* Before the fork: `kill -USR1 $(pidof dirty)` reaches the heartbeat
	 * child too, which must not die of it. */
	signal(SIGUSR1, on_usr1);
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
	printf("ARMFLEET-DIRTY-START mib=%llu percent=%ld threads=%ld seed=%llu verify=%d\n",
	       (unsigned long long)(want >> 20), percent, threads,
	       (unsigned long long)seed, verify);
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
	size_t pages = want / PAGE;
	size_t per = pages / (size_t)threads;
	pthread_barrier_t filled;
	pthread_barrier_init(&filled, NULL, (unsigned)threads + 1);
	struct slice *slices = calloc((size_t)threads, sizeof *slices);
	for (long t = 0; t < threads; t++) {
		size_t first = (size_t)t * per;
		slices[t] = (struct slice){
			.thread = (int)t,
			.seed = seed,
			.verify = verify,
			.base = buf + first * PAGE_WORDS,
			.pages = t == threads - 1 ? pages - first : per,
			.first_page = first,
			.sh = sh,
			.filled = &filled,
		};
		pthread_t tid;
		if (pthread_create(&tid, NULL, dirty_thread, &slices[t]) != 0) {
			perror("dirty: pthread_create");
			return 1;
		}
	}
	pthread_barrier_wait(&filled);
	sh->passes = 1;
	printf("ARMFLEET-DIRTY-READY mib=%llu\n", (unsigned long long)(want >> 20));
	for (;;)
		pause();
}
