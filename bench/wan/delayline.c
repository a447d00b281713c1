/*
 * wan-delayline: the lab's userspace delay line (these kernels have no netem).
 *
 * It opens two TUN devices in the lab's middle namespace, one per direction
 * (the lab routes packets that arrive from the client side into the first and
 * those from the server side into the second). Every IP packet read from a
 * device is held for the configured one-way delay (plus jitter), maybe
 * dropped, and then written back into the same device: the kernel receives it
 * there and forwards it on by its destination. TCP and UDP alike, no proxy.
 *
 *   wan-delayline DEV_AB DEV_BA
 *
 * Commands on stdin, one per line (the lab reconfigures between runs):
 *   set DELAY_US JITTER_US LOSS_PPM LOSS_MIN_BYTES SEED
 *       one-way delay and jitter (uniform in +-JITTER_US, never reordering:
 *       a packet is never released before the one read before it), random
 *       loss in parts per million per direction, applied only to packets of
 *       at least LOSS_MIN_BYTES (0: every packet; the head-of-line test uses
 *       it to hit one bulky stream's full-size packets and spare small ones)
 *   stats      prints one JSON line of counters per direction
 * It prints "ready" once both devices exist, and exits when stdin closes
 * or its parent dies.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_PKT 2048
#define QUEUE_SLOTS 16384 /* per direction: 100 ms at ~1.9 Gbit/s of full-size packets */

struct slot {
  uint64_t release_ns;
  uint16_t len;
  unsigned char data[MAX_PKT];
};

struct dir {
  int fd;
  struct slot *q;
  size_t head, count;
  uint64_t last_release_ns;
  uint64_t rx, tx, drop_loss, drop_queue, bytes_rx, max_queue;
};

static uint64_t delay_ns, jitter_ns, loss_ppm, loss_min_bytes;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t next_rand(void) { /* xorshift64* */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1dull;
}

static int open_tun(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    perror("wan-delayline: open /dev/net/tun");
    exit(1);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    fprintf(stderr, "wan-delayline: TUNSETIFF %s: %s\n", name, strerror(errno));
    exit(1);
  }
  return fd;
}

static void take_packets(struct dir *d, uint64_t now) {
  for (int i = 0; i < 256; i++) {
    unsigned char buf[MAX_PKT];
    ssize_t n = read(d->fd, buf, sizeof buf);
    if (n <= 0) return;
    d->rx++;
    d->bytes_rx += (uint64_t)n;
    if (loss_ppm && (uint64_t)n >= loss_min_bytes && next_rand() % 1000000ull < loss_ppm) {
      d->drop_loss++;
      continue;
    }
    if (d->count == QUEUE_SLOTS) {
      d->drop_queue++;
      continue;
    }
    uint64_t release = now + delay_ns;
    if (jitter_ns) {
      int64_t j = (int64_t)(next_rand() % (2 * jitter_ns + 1)) - (int64_t)jitter_ns;
      release = (int64_t)release + j < (int64_t)now ? now : (uint64_t)((int64_t)release + j);
    }
    if (release < d->last_release_ns) release = d->last_release_ns;
    d->last_release_ns = release;
    struct slot *s = &d->q[(d->head + d->count) % QUEUE_SLOTS];
    s->release_ns = release;
    s->len = (uint16_t)n;
    memcpy(s->data, buf, (size_t)n);
    d->count++;
    if (d->count > d->max_queue) d->max_queue = d->count;
  }
}

/* Writes every due packet; returns ns until the next one is due (or UINT64_MAX). */
static uint64_t release_due(struct dir *d, uint64_t now) {
  while (d->count) {
    struct slot *s = &d->q[d->head];
    if (s->release_ns > now) return s->release_ns - now;
    if (write(d->fd, s->data, s->len) == (ssize_t)s->len) d->tx++;
    else d->drop_queue++;
    d->head = (d->head + 1) % QUEUE_SLOTS;
    d->count--;
  }
  return UINT64_MAX;
}

static void print_dir(const char *name, const struct dir *d, const char *sep) {
  printf("\"%s\":{\"rx\":%llu,\"tx\":%llu,\"dropLoss\":%llu,\"dropQueue\":%llu,\"bytesRx\":%llu,\"maxQueue\":%llu}%s", name,
         (unsigned long long)d->rx, (unsigned long long)d->tx, (unsigned long long)d->drop_loss, (unsigned long long)d->drop_queue,
         (unsigned long long)d->bytes_rx, (unsigned long long)d->max_queue, sep);
}

static void command(char *line, struct dir *ab, struct dir *ba) {
  unsigned long long dl, jt, lp, lm, seed;
  if (sscanf(line, "set %llu %llu %llu %llu %llu", &dl, &jt, &lp, &lm, &seed) == 5) {
    delay_ns = dl * 1000ull;
    jitter_ns = jt * 1000ull;
    loss_ppm = lp;
    loss_min_bytes = lm;
    rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    printf("ok\n");
  } else if (strncmp(line, "stats", 5) == 0) {
    printf("{");
    print_dir("ab", ab, ",");
    print_dir("ba", ba, "");
    printf("}\n");
  } else {
    printf("error unknown command\n");
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: wan-delayline DEV_AB DEV_BA\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  prctl(PR_SET_TIMERSLACK, 1UL);
  signal(SIGPIPE, SIG_IGN);
  struct dir ab = {0}, ba = {0};
  ab.fd = open_tun(argv[1]);
  ba.fd = open_tun(argv[2]);
  ab.q = calloc(QUEUE_SLOTS, sizeof(struct slot));
  ba.q = calloc(QUEUE_SLOTS, sizeof(struct slot));
  if (!ab.q || !ba.q) {
    fprintf(stderr, "wan-delayline: out of memory\n");
    return 1;
  }
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  printf("ready\n");
  fflush(stdout);

  char cmd[256];
  size_t cmd_len = 0;
  for (;;) {
    uint64_t now = now_ns();
    uint64_t wait_ab = release_due(&ab, now), wait_ba = release_due(&ba, now);
    uint64_t wait = wait_ab < wait_ba ? wait_ab : wait_ba;
    struct pollfd p[3] = {{ab.fd, POLLIN, 0}, {ba.fd, POLLIN, 0}, {0, POLLIN, 0}};
    struct timespec ts, *tsp = NULL;
    if (wait != UINT64_MAX) {
      ts.tv_sec = (time_t)(wait / 1000000000ull);
      ts.tv_nsec = (long)(wait % 1000000000ull);
      tsp = &ts;
    }
    if (ppoll(p, 3, tsp, NULL) < 0 && errno != EINTR) {
      perror("wan-delayline: ppoll");
      return 1;
    }
    now = now_ns();
    if (p[0].revents & POLLIN) take_packets(&ab, now);
    if (p[1].revents & POLLIN) take_packets(&ba, now);
    if (p[2].revents & (POLLIN | POLLHUP)) {
      for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n == 0) return 0; /* the lab closed our stdin: done */
        if (n < 0) break;
        if (c == '\n') {
          cmd[cmd_len] = 0;
          command(cmd, &ab, &ba);
          cmd_len = 0;
        } else if (cmd_len < sizeof cmd - 1) {
          cmd[cmd_len++] = c;
        }
      }
    }
  }
}
