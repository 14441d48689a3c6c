/*
 * A workload for fidelity tests of checkpoint/restore and migration: one
 * container holding every kind of state the tests promise survives, each
 * checked continuously from inside.
 *
 *   fidelity DIR LOCK PEER_ADDR PEER_PORT SLEEP_MS
 *
 * Three processes with stable pids: the parent (the container's init),
 * a child and a grandchild, sharing a MAP_SHARED page.
 *  - stdio: the parent writes "out N" lines (N = 1, 2, 3...) to stdout;
 *    the test checks the sequence it read has no gap or repeat.
 *  - socketpair: each beat the parent sends N to the child, which answers
 *    N * 2 + 1 on the same stream socket pair.
 *  - flock: the parent holds an exclusive flock on LOCK; a second open of
 *    the file must fail to take it (EWOULDBLOCK), here and from outside.
 *  - itimer: ITIMER_REAL with a 50 ms interval counts SIGALRMs; the count
 *    must keep growing and the interval stay as set.
 *  - sleep: the grandchild sleeps SLEEP_MS at a time in nanosleep(2) (as
 *    busybox's sleep does: resumes with the remaining time after EINTR);
 *    each sleep must take at least SLEEP_MS and at most SLEEP_MS plus the
 *    time the container was stopped meanwhile (the parent's heartbeat
 *    gaps) plus some slack.
 *  - tree: every process sees its own and its parent's pid as at start;
 *    no child ever dies.
 *  - tcp: a TCP connection to PEER_ADDR:PEER_PORT (an echo server outside
 *    the container); each beat N goes out and must come back.
 *  - tmpfs: /dev/shm/fidelity holds 1 MiB written at start (checked every
 *    50 beats), and /dev/shm/fidelity-beat the last beat: each beat reads
 *    the one before back, then writes its own (a copy of the tmpfs older
 *    than the freeze would make it go back).
 *
 * DIR/status (written beside and renamed, every beat) holds one line per
 * property, "NAME ok DETAIL" or "NAME failed WHY" (the first failure
 * sticks), then "beat N" and "sleeps N" (sleeps completed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { STDIO, SOCKPAIR, FLOCK, ITIMER, SLEEP, TREE, TCP, TMPFS, NPROP };
static const char *names[NPROP] = {"stdio", "socketpair", "flock", "itimer", "sleep", "tree", "tcp", "tmpfs"};

#define SHM_BIG "/dev/shm/fidelity"
#define SHM_BEAT "/dev/shm/fidelity-beat"
#define SHM_LEN (1 << 20)

/* The big file's content: a fixed pseudo-random sequence. */
static void shm_pattern(unsigned char *buf) {
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < SHM_LEN; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)x;
	}
}

/* Shared by the three processes. */
struct shared {
	volatile int child_pid, child_ppid, grand_pid, grand_ppid;
	volatile int64_t stopped_us; /* sum of the parent's heartbeat gaps beyond a beat */
	volatile uint64_t beat;      /* the parent's beats */
	volatile uint64_t sleeps;
	volatile int sleep_failed;
	char sleep_why[200];
	char sleep_last[100];
};

static struct shared *sh;
static char failed[NPROP][200];
static char detail[NPROP][100];
static volatile sig_atomic_t alarms;

static void on_alarm(int sig) { (void)sig; alarms++; }

static void fail(int p, const char *fmt, ...) {
	if (failed[p][0]) return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failed[p], sizeof failed[p], fmt, ap);
	va_end(ap);
	if (!failed[p][0]) strcpy(failed[p], "?");
}

static int64_t now_us(clockid_t c) {
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Reads exactly n bytes within timeout_ms (EINTR-safe); 0 or -1. */
static int read_full(int fd, void *buf, size_t n, int timeout_ms) {
	size_t got = 0;
	int64_t end = now_us(CLOCK_MONOTONIC) + (int64_t)timeout_ms * 1000;
	while (got < n) {
		int64_t left = (end - now_us(CLOCK_MONOTONIC)) / 1000;
		if (left <= 0) { errno = ETIMEDOUT; return -1; }
		struct pollfd pfd = {fd, POLLIN, 0};
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) { if (r == 0) errno = ETIMEDOUT; return -1; }
		ssize_t k = read(fd, (char *)buf + got, n - got);
		if (k < 0 && errno == EINTR) continue;
		if (k <= 0) { if (k == 0) errno = EPIPE; return -1; }
		got += (size_t)k;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
	size_t put = 0;
	while (put < n) {
		ssize_t k = write(fd, (const char *)buf + put, n - put);
		if (k < 0 && errno == EINTR) continue;
		if (k <= 0) return -1;
		put += (size_t)k;
	}
	return 0;
}

/* The grandchild: sleeps, checks each sleep's length, forever. */
static void grandchild(int64_t sleep_ms) {
	for (;;) {
		sh->grand_pid = getpid();
		sh->grand_ppid = getppid();
		int64_t stopped0 = sh->stopped_us, t0 = now_us(CLOCK_REALTIME);
		struct timespec req = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000}, rem;
		while (nanosleep(&req, &rem) < 0 && errno == EINTR) req = rem;
		int64_t took = now_us(CLOCK_REALTIME) - t0;
		/* The parent counts a stop at its first beat after it: wait for
		 * two more beats before reading the sum (at most 5 s). */
		uint64_t b = sh->beat;
		for (int i = 0; i < 1000 && sh->beat < b + 2; i++) usleep(5000);
		int64_t stopped = sh->stopped_us - stopped0;
		/* Slack for a slow (emulated) machine. */
		int64_t most = sleep_ms * 1000 + stopped + 1500000 + stopped / 10;
		if (!sh->sleep_failed && (took < sleep_ms * 1000 || took > most)) {
			snprintf(sh->sleep_why, sizeof sh->sleep_why,
			         "a %lld ms sleep took %lld ms (container stopped %lld ms meanwhile)",
			         (long long)sleep_ms, (long long)(took / 1000), (long long)(stopped / 1000));
			sh->sleep_failed = 1;
		}
		snprintf(sh->sleep_last, sizeof sh->sleep_last, "last took %lld ms, stopped %lld ms",
		         (long long)(took / 1000), (long long)(stopped / 1000));
		sh->sleeps++;
	}
}

/* The child: answers the parent on the socket pair. */
static void child(int sock, int64_t sleep_ms) {
	pid_t g = fork();
	if (g == 0) {
		close(sock);
		grandchild(sleep_ms);
	}
	for (;;) {
		sh->child_pid = getpid();
		sh->child_ppid = getppid();
		uint64_t n;
		if (read_full(sock, &n, sizeof n, 3600 * 1000) < 0) _exit(3);
		n = n * 2 + 1;
		if (write_full(sock, &n, sizeof n) < 0) _exit(3);
	}
}

static int connect_peer(const char *addr, int port) {
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return -1;
	for (int i = 0; i < 200; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) return -1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
			return fd;
		}
		close(fd);
		usleep(50000);
	}
	return -1;
}

static void write_status(const char *dir, uint64_t beat) {
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof tmp, "%s/.status.tmp", dir);
	snprintf(dst, sizeof dst, "%s/status", dir);
	FILE *f = fopen(tmp, "w");
	if (!f) return;
	for (int p = 0; p < NPROP; p++) {
		if (failed[p][0]) fprintf(f, "%s failed %s\n", names[p], failed[p]);
		else fprintf(f, "%s ok %s\n", names[p], detail[p]);
	}
	fprintf(f, "beat %llu\nsleeps %llu\n", (unsigned long long)beat, (unsigned long long)sh->sleeps);
	fclose(f);
	rename(tmp, dst);
}

int main(int argc, char **argv) {
	if (argc != 6) {
		fprintf(stderr, "usage: fidelity DIR LOCK PEER_ADDR PEER_PORT SLEEP_MS\n");
		return 2;
	}
	const char *dir = argv[1];
	const char *lockpath = argv[2];
	int64_t sleep_ms = strtoll(argv[5], NULL, 10);
	setvbuf(stdout, NULL, _IONBF, 0);
	sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) return 1;

	int lock = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) < 0) {
		perror("flock");
		return 1;
	}

	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) return 1;
	pid_t self = getpid();
	pid_t c = fork();
	if (c < 0) return 1;
	if (c == 0) {
		close(sp[0]);
		close(lock);
		child(sp[1], sleep_ms);
	}
	close(sp[1]);
	int sock = sp[0];

	int tcp = connect_peer(argv[3], atoi(argv[4]));
	if (tcp < 0) fail(TCP, "cannot connect to %s:%s", argv[3], argv[4]);

	struct sigaction sa = {0};
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 50000}, {0, 50000}};
	setitimer(ITIMER_REAL, &it, NULL);

	static unsigned char want[SHM_LEN], got[SHM_LEN];
	shm_pattern(want);
	int big = open(SHM_BIG, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (big < 0 || write_full(big, want, SHM_LEN) < 0) fail(TMPFS, "write %s: %s", SHM_BIG, strerror(errno));
	if (big >= 0) close(big);

	/* The child and the grandchild report in before the first status (the
	 * grandchild can be first: the child records itself after the fork). */
	for (int i = 0; i < 500 && (!sh->grand_pid || !sh->child_pid); i++) usleep(10000);
	int c0 = sh->child_pid, g0 = sh->grand_pid;
	uint64_t beat = 0, seq = 0, alarms_mark = 0, beats_mark = 0;
	int64_t last = now_us(CLOCK_REALTIME);
	const int64_t beat_us = 20000;
	for (;;) {
		struct timespec d = {0, beat_us * 1000};
		while (nanosleep(&d, &d) < 0 && errno == EINTR) {}
		int64_t t = now_us(CLOCK_REALTIME);
		if (t - last > beat_us) sh->stopped_us += t - last - beat_us;
		last = t;
		sh->beat = ++beat;

		/* stdio: every 5th beat, a numbered line. */
		if (beat % 5 == 0) {
			char line[64];
			int n = snprintf(line, sizeof line, "out %llu\n", (unsigned long long)++seq);
			if (write_full(1, line, (size_t)n) < 0) fail(STDIO, "write to stdout: %s", strerror(errno));
			snprintf(detail[STDIO], sizeof detail[STDIO], "lines=%llu", (unsigned long long)seq);
		}

		/* socketpair: N out, N*2+1 back. */
		uint64_t n = beat, back = 0;
		if (failed[SOCKPAIR][0]) {
		} else if (write_full(sock, &n, sizeof n) < 0) fail(SOCKPAIR, "send: %s", strerror(errno));
		else if (read_full(sock, &back, sizeof back, 10000) < 0) fail(SOCKPAIR, "receive: %s", strerror(errno));
		else if (back != n * 2 + 1) fail(SOCKPAIR, "sent %llu, got %llu", (unsigned long long)n, (unsigned long long)back);
		snprintf(detail[SOCKPAIR], sizeof detail[SOCKPAIR], "exchanges=%llu", (unsigned long long)beat);

		/* flock: another open file description cannot take it. */
		if (beat % 10 == 0) {
			int other = open(lockpath, O_RDWR | O_CLOEXEC);
			if (other < 0) fail(FLOCK, "reopen %s: %s", lockpath, strerror(errno));
			else if (flock(other, LOCK_EX | LOCK_NB) == 0) fail(FLOCK, "a second open took the lock: it was lost");
			else if (errno != EWOULDBLOCK) fail(FLOCK, "second flock: %s", strerror(errno));
			if (other >= 0) close(other);
			snprintf(detail[FLOCK], sizeof detail[FLOCK], "held");
		}

		/* itimer: 50 beats (1 s of running) see at least 10 alarms. */
		if (beat - beats_mark >= 50) {
			uint64_t a = (uint64_t)alarms;
			struct itimerval cur;
			getitimer(ITIMER_REAL, &cur);
			if (a - alarms_mark < 10) fail(ITIMER, "%llu SIGALRMs in 50 beats", (unsigned long long)(a - alarms_mark));
			else if (cur.it_interval.tv_sec != 0 || cur.it_interval.tv_usec != 50000)
				fail(ITIMER, "interval is %ld.%06ld s, not 0.05", (long)cur.it_interval.tv_sec, (long)cur.it_interval.tv_usec);
			alarms_mark = a;
			beats_mark = beat;
			snprintf(detail[ITIMER], sizeof detail[ITIMER], "alarms=%llu", (unsigned long long)a);
		}

		/* sleep: as the grandchild measured it. */
		if (sh->sleep_failed) fail(SLEEP, "%s", sh->sleep_why);
		snprintf(detail[SLEEP], sizeof detail[SLEEP], "%s", sh->sleep_last);

		/* tree: same pids, same parents, nobody gone. */
		int st;
		pid_t gone = waitpid(-1, &st, WNOHANG);
		if (gone > 0) fail(TREE, "process %d exited (status %#x)", gone, st);
		if (getpid() != self) fail(TREE, "parent pid %d, was %d", getpid(), self);
		if (sh->child_pid != c0 || sh->child_ppid != self)
			fail(TREE, "child pid %d parent %d, was %d parent %d", sh->child_pid, sh->child_ppid, c0, self);
		if (sh->grand_pid != g0 || sh->grand_ppid != c0)
			fail(TREE, "grandchild pid %d parent %d, was %d parent %d", sh->grand_pid, sh->grand_ppid, g0, c0);
		snprintf(detail[TREE], sizeof detail[TREE], "pids=%d,%d,%d", self, c0, g0);

		/* tcp: N out, N back, on the one connection. */
		if (tcp >= 0 && beat % 5 == 0) {
			uint64_t echo = 0;
			if (write_full(tcp, &beat, sizeof beat) < 0) fail(TCP, "send: %s", strerror(errno));
			else if (read_full(tcp, &echo, sizeof echo, 10000) < 0) fail(TCP, "receive: %s", strerror(errno));
			else if (echo != beat) fail(TCP, "sent %llu, got %llu", (unsigned long long)beat, (unsigned long long)echo);
			snprintf(detail[TCP], sizeof detail[TCP], "exchanges=%llu", (unsigned long long)beat / 5);
			if (failed[TCP][0]) {
				close(tcp);
				tcp = -1;
			}
		}

		/* tmpfs: the beat written last time is there; the big file intact. */
		if (!failed[TMPFS][0]) {
			char text[32] = {0};
			int f = open(SHM_BEAT, O_RDONLY | O_CLOEXEC);
			if (f >= 0) {
				ssize_t r = read(f, text, sizeof text - 1);
				close(f);
				if (r < 0) fail(TMPFS, "read %s: %s", SHM_BEAT, strerror(errno));
				else if (beat > 1 && strtoull(text, NULL, 10) != beat - 1)
					fail(TMPFS, "%s holds %s, the last beat was %llu", SHM_BEAT, text, (unsigned long long)(beat - 1));
			} else if (beat > 1) fail(TMPFS, "open %s: %s", SHM_BEAT, strerror(errno));
			char tmp[] = SHM_BEAT ".tmp";
			f = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			int n = snprintf(text, sizeof text, "%llu", (unsigned long long)beat);
			if (f < 0 || write_full(f, text, (size_t)n) < 0) fail(TMPFS, "write %s: %s", tmp, strerror(errno));
			if (f >= 0) close(f);
			if (rename(tmp, SHM_BEAT) < 0) fail(TMPFS, "rename to %s: %s", SHM_BEAT, strerror(errno));
			if (beat % 50 == 0) {
				int b = open(SHM_BIG, O_RDONLY | O_CLOEXEC);
				if (b < 0 || read_full(b, got, SHM_LEN, 1000) < 0) fail(TMPFS, "read %s: %s", SHM_BIG, strerror(errno));
				else if (memcmp(got, want, SHM_LEN) != 0) fail(TMPFS, "%s changed", SHM_BIG);
				if (b >= 0) close(b);
			}
			snprintf(detail[TMPFS], sizeof detail[TMPFS], "beat=%llu", (unsigned long long)beat);
		}

		write_status(dir, beat);
	}
}
