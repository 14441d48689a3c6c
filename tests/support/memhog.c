/*
 * A workload for checkpoint and migration tests: holds N MiB of random data
 * in its own memory and proves it intact.
 *
 *   memhog MIB DIR [DIRTY_KIB_PER_S]
 *
 * Writes DIR/sum-before (FNV-1a 64 of the data) once filled, then every
 * 10 ms a heartbeat: DIR/maxgap holds the largest gap between two beats in
 * microseconds (the downtime a checkpoint or migration caused), DIR/count
 * the number of beats so far (every 10th beat). On SIGUSR1 it writes
 * DIR/sum-after. Files are written beside and renamed.
 *
 * With DIRTY_KIB_PER_S it also rewrites that much memory per second, page
 * after page round the buffer: each rewrite inverts a whole page and
 * flips the page's bit in a ledger. sum-after undoes the inversions the
 * ledger records, so it equals sum-before only if every page arrived in
 * its latest version, with the ledger of the same instant (a page missed
 * by the last round of a pre-copy shows up as a different sum).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_sum;

static void on_usr1(int sig) { (void)sig; want_sum = 1; }

#define PAGE 4096

/* FNV-1a 64 of the data as filled: inverted pages are read inverted. */
static uint64_t fnv(const unsigned char *p, size_t n, const unsigned char *flipped) {
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		unsigned char b = p[i];
		if (flipped[i / PAGE]) b = (unsigned char)~b;
		h ^= b;
		h *= 1099511628211ULL;
	}
	return h;
}

/* Inverts page `pg` and records it. */
static void flip(unsigned char *buf, unsigned char *flipped, size_t pg) {
	uint64_t *w = (uint64_t *)(buf + pg * PAGE);
	for (size_t i = 0; i < PAGE / sizeof *w; i++) w[i] = ~w[i];
	flipped[pg] ^= 1;
}

static void put(const char *dir, const char *name, const char *fmt, unsigned long long v) {
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
	snprintf(dst, sizeof dst, "%s/%s", dir, name);
	FILE *f = fopen(tmp, "w");
	if (!f) return;
	fprintf(f, fmt, v);
	fclose(f);
	rename(tmp, dst);
}

static uint64_t now_us(void) {
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: memhog MIB DIR [DIRTY_KIB_PER_S]\n");
		return 2;
	}
	size_t n = (size_t)strtoull(argv[1], NULL, 10) << 20;
	const char *dir = argv[2];
	double dirty = argc == 4 ? strtod(argv[3], NULL) * 1024 : 0;
	size_t pages = n / PAGE;
	unsigned char *flipped = calloc(pages ? pages : 1, 1);
	if (!flipped) return 1;
	unsigned char *buf = malloc(n ? n : 1);
	if (!buf) return 1;
	for (size_t off = 0; off < n;) {
		ssize_t r = getrandom(buf + off, n - off > (1 << 20) ? (1 << 20) : n - off, 0);
		if (r <= 0) return 1;
		off += (size_t)r;
	}
	signal(SIGUSR1, on_usr1);
	put(dir, "sum-before", "%016llx\n", (unsigned long long)fnv(buf, n, flipped));
	uint64_t last = now_us(), maxgap = 0, beats = 0;
	double budget = 0;
	size_t cursor = 0;
	for (;;) {
		struct timespec d = {0, 10 * 1000 * 1000};
		nanosleep(&d, NULL);
		uint64_t t = now_us();
		if (t - last > maxgap) {
			maxgap = t - last;
			put(dir, "maxgap", "%llu\n", (unsigned long long)maxgap);
		}
		/* At most 100 ms of catching up after a freeze: a steady rate. */
		budget += dirty * (double)(t - last > 100000 ? 100000 : t - last) / 1e6;
		for (; budget >= PAGE && pages; budget -= PAGE) {
			flip(buf, flipped, cursor);
			cursor = (cursor + 1) % pages;
		}
		last = t;
		if (++beats % 10 == 0) put(dir, "count", "%llu\n", (unsigned long long)beats);
		if (want_sum) {
			want_sum = 0;
			put(dir, "sum-after", "%016llx\n", (unsigned long long)fnv(buf, n, flipped));
		}
	}
}
