/*
 * loadgen: the Pusher-protocol load generator of the reverb-py benchmark suite.
 *
 * One thread, one epoll loop, raw sockets: it does the WebSocket handshake itself, parses frames
 * in place and never allocates per message, so that one core can receive about a million small
 * frames per second and the server under test, not this program, is the bottleneck.  It signs
 * HTTP API requests and private-channel subscriptions itself (SHA-256, HMAC, MD5 below), so it
 * needs nothing but a C compiler and libm.
 *
 * Modes (results as one JSON object on stdout, progress and errors on stderr):
 *   broadcast      --conns N subscribers of one channel; backend triggers over keep-alive HTTP,
 *                  closed loop on --http-conns connections (--rate 0) or paced at --rate per
 *                  second; counts every delivery, lost messages, trigger-to-receive latency.
 *   client-events  --pairs P pairs of sockets sharing a private channel; client events at
 *                  --rate per second in total; counts losses and sender-to-peer latency.
 *   hold           --conns N sockets with --subs channels each, held for --duration seconds;
 *                  connect+subscribe rate, server RSS per connection, server CPU while idle;
 *                  answers pusher:ping and WebSocket pings.
 *   mock           a trivial fan-out server on --listen PORT (upgrade, subscribe, HTTP trigger
 *                  broadcast, no checks): the source the runner uses to measure the ceiling of
 *                  this generator.
 * With --server-pid the generator samples /proc/PID of the server at phase boundaries.
 * With --ws-ports P1,P2,.. the WebSocket clients are spread round-robin over those ports (the
 * replicas of a cluster) while HTTP triggers go to --port.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ hashing */

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
static uint32_t rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                      SHA_K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static uint32_t MD5_T[64];
static const uint8_t MD5_S[64] = {7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                                  5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
                                  4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                                  6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21};

static void md5_block(uint32_t h[4], const uint8_t *p) {
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16)
            f = (b & c) | (~b & d), g = i;
        else if (i < 32)
            f = (d & b) | (~d & c), g = (5 * i + 1) % 16;
        else if (i < 48)
            f = b ^ c ^ d, g = (3 * i + 5) % 16;
        else
            f = c ^ (b | ~d), g = (7 * i) % 16;
        f += a + MD5_T[i] + m[g];
        a = d, d = c, c = b, b += rotl(f, MD5_S[i]);
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d;
}

/* Merkle-Damgard padding shared by both hashes: they differ only in the length's byte order. */
static void md_finish(const uint8_t *m, size_t n, int big_endian, void *state,
                      void (*block)(void *, const uint8_t *)) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) block(state, m + i);
    uint8_t tail[128] = {0};
    size_t r = n - i, tl = r + 9 <= 64 ? 64 : 128;
    memcpy(tail, m + i, r);
    tail[r] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int k = 0; k < 8; k++) tail[big_endian ? tl - 1 - k : tl - 8 + k] = (uint8_t)(bits >> 8 * k);
    for (size_t k = 0; k < tl; k += 64) block(state, tail + k);
}

static void sha256_cb(void *s, const uint8_t *p) { sha256_block(s, p); }
static void md5_cb(void *s, const uint8_t *p) { md5_block(s, p); }

static void sha256(const uint8_t *m, size_t n, uint8_t out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    md_finish(m, n, 1, h, sha256_cb);
    for (int k = 0; k < 32; k++) out[k] = (uint8_t)(h[k / 4] >> (24 - 8 * (k % 4)));
}

static void hex(const uint8_t *d, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) out[2 * i] = digits[d[i] >> 4], out[2 * i + 1] = digits[d[i] & 15];
    out[2 * n] = 0;
}

static void md5_hex(const char *m, size_t n, char out[33]) {
    uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    md_finish((const uint8_t *)m, n, 0, h, md5_cb);
    uint8_t d[16];
    for (int k = 0; k < 16; k++) d[k] = (uint8_t)(h[k / 4] >> 8 * (k % 4));
    hex(d, 16, out);
}

static void hmac_sha256_hex(const char *key, const char *msg, size_t n, char out[65]) {
    uint8_t k[64] = {0}, buf[64 + 2048], inner[32], outer[96], dig[32];
    size_t kl = strlen(key);
    if (kl > 64)
        sha256((const uint8_t *)key, kl, k);
    else
        memcpy(k, key, kl);
    if (n > 2048) {
        fprintf(stderr, "loadgen: message to sign too long\n");
        exit(2);
    }
    for (int i = 0; i < 64; i++) buf[i] = k[i] ^ 0x36, outer[i] = k[i] ^ 0x5c;
    memcpy(buf + 64, msg, n);
    sha256(buf, 64 + n, inner);
    memcpy(outer + 64, inner, 32);
    sha256(outer, 96, dig);
    hex(dig, 32, out);
}

/* ------------------------------------------------------------------ clocks, /proc */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* utime+stime of the server process in seconds, -1 when there is no pid or it is gone. */
static double proc_cpu_s(int pid) {
    char path[64], buf[2048];
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kib(int pid) {
    char path[64], line[256];
    long kib = -1;
    if (pid <= 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kib = atol(line + 6);
    fclose(f);
    return kib;
}

/* Busy time (everything but idle and iowait) of each CPU, from /proc/stat: unlike a process's
 * own CPU time it includes the softirq work that loopback TCP does on the sending core, so it is
 * the honest "is this core saturated" figure.  Returns the number of CPUs read. */
#define MAX_CPUS 64
static int cpu_busy_s(double busy[MAX_CPUS], double total[MAX_CPUS]) {
    char line[512];
    int n = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f) && n < MAX_CPUS) {
        unsigned long long v[10] = {0};
        int cpu;
        if (strncmp(line, "cpu", 3) != 0 || !isdigit((unsigned char)line[3])) continue;
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 9 || cpu != n)
            continue;
        double t = 0;
        for (int i = 0; i < 8; i++) t += (double)v[i];
        total[n] = t;
        busy[n] = t - (double)v[3] - (double)v[4];
        n++;
    }
    fclose(f);
    return n;
}

/* ------------------------------------------------------------------ latency histogram */

/* Log-linear buckets over nanoseconds: 64 sub-buckets per power of two, < 1.6 % error. */
#define HIST_N (64 + 58 * 64)
typedef struct {
    uint64_t bucket[HIST_N], count;
} histogram;

/* Every sample, and the same samples split by the receiving socket's position in the order the
 * sockets finished subscribing (tenths of the ready sockets), which is the order a server that
 * keeps subscribers in insertion order fans a message out in: it shows whether the tail is the
 * end of one long fan-out loop. */
#define DECILES 10
static histogram hist, hist_decile[DECILES];

static void hist_add(histogram *h, uint64_t v) {
    int idx;
    if (v < 64)
        idx = (int)v;
    else {
        int shift = 63 - __builtin_clzll(v) - 6;
        idx = 64 + shift * 64 + (int)((v >> shift) & 63);
    }
    h->bucket[idx]++;
    h->count++;
}

static double hist_value_ms(int idx) {
    if (idx < 64) return idx / 1e6;
    int shift = (idx - 64) / 64, sub = (idx - 64) % 64;
    double lo = (double)((uint64_t)(64 + sub) << shift), width = (double)(1ull << shift);
    return (lo + width / 2) / 1e6;
}

static double hist_quantile_ms(const histogram *h, double q) {
    if (!h->count) return -1;
    uint64_t want = (uint64_t)ceil(q * (double)h->count), seen = 0;
    if (want == 0) want = 1;
    for (int i = 0; i < HIST_N; i++)
        if ((seen += h->bucket[i]) >= want) return hist_value_ms(i);
    return -1;
}

/* ------------------------------------------------------------------ options */

static struct {
    const char *mode, *host, *app_id, *key, *secret, *channel, *ws_ports;
    int port, listen_port, conns, subs, pairs, http_conns, concurrency, server_pid, batch, signin;
    double duration, rate, settle, connect_timeout;
} O = {.host = "127.0.0.1",
       .app_id = "app-id",
       .key = "app-key",
       .secret = "app-secret",
       .channel = "bench",
       .port = 6001,
       .subs = 1,
       .batch = 1,
       .http_conns = 4,
       .concurrency = 200,
       .duration = 10,
       .settle = 1,
       .connect_timeout = 120};

enum { M_BROADCAST, M_CLIENT_EVENTS, M_HOLD, M_MOCK };
static int mode;

/* ------------------------------------------------------------------ connections */

enum { K_WS = 1, K_HTTP, K_LISTEN, K_MOCK };
enum {
    S_CONNECTING = 1,
    S_HANDSHAKE,
    S_ESTABLISHING,
    S_SIGNING,
    S_SUBSCRIBING,
    S_READY,
    S_BUSY,
    S_CLOSED
};

typedef struct conn {
    int fd;
    uint8_t kind, state, want_out, was_ready;
    uint32_t id;
    char *rbuf, *wbuf;
    uint32_t rlen, rcap, wlen, woff, wcap;
    uint16_t subs_ok, subs_total;
    int32_t sub_index; /* mock: position in the subscriber list, -1 when not subscribed */
    uint32_t ready_rank; /* how many sockets were ready before this one */
    uint64_t recv_bench, sent_events;
    char socket_id[32];
} conn;

#define RBCAP (1 << 20)
static char *RB; /* every read lands here; only an incomplete tail is copied to conn->rbuf */
static int ep;
static conn **ws, **hc, **subs_list;
static int nws, nhc, nsubs, inflight, started;

static struct {
    uint64_t ws_ready, ws_failed, disconnects, pusher_errors, bench_recv, pings, ws_pings, pongs;
    uint64_t http_sent, http_ok, http_errors, http_failed, http_reconnects, ev_sent;
} S;

static int logged; /* errors are logged to stderr, but only the first few */
#define LOG_ERR(...)                                                                             \
    do {                                                                                         \
        if (logged++ < 8) fprintf(stderr, "loadgen: " __VA_ARGS__);                              \
    } while (0)

static void ep_set(conn *c, uint32_t ev, int op) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &e) < 0 && op != EPOLL_CTL_DEL) perror("epoll_ctl");
}

static void conn_close(conn *c) {
    if (c->state == S_CLOSED) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_CLOSED;
    c->rlen = c->wlen = c->woff = 0;
    c->want_out = 0;
    if (c->sub_index >= 0) { /* mock subscriber list: swap-remove */
        subs_list[c->sub_index] = subs_list[--nsubs];
        subs_list[c->sub_index]->sub_index = c->sub_index;
        c->sub_index = -1;
    }
}

static void ws_fail(conn *c, const char *why) {
    if (c->state == S_CLOSED) return;
    if (c->state < S_READY) {
        S.ws_failed++;
        inflight--;
    } else {
        S.disconnects++;
    }
    LOG_ERR("connection %u: %s\n", c->id, why);
    conn_close(c);
}

static void http_lost(conn *c, const char *why);

static void on_write_error(conn *c) {
    if (c->kind == K_WS)
        ws_fail(c, strerror(errno));
    else if (c->kind == K_HTTP)
        http_lost(c, strerror(errno));
    else
        conn_close(c);
}

static void flush_out(conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            on_write_error(c);
            return;
        }
        c->woff += (uint32_t)n;
    }
    if (c->woff == c->wlen) {
        c->woff = c->wlen = 0;
        if (c->want_out) ep_set(c, EPOLLIN, EPOLL_CTL_MOD), c->want_out = 0;
    } else if (!c->want_out) {
        ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD), c->want_out = 1;
    }
}

/* Sends at once when nothing is queued; otherwise (or for the rest) queues and waits for EPOLLOUT. */
static void conn_write(conn *c, const void *data, size_t len) {
    if (c->state == S_CLOSED) return;
    const char *p = data;
    if (c->wlen == 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                on_write_error(c);
                return;
            }
            n = 0;
        }
        if ((size_t)n == len) return;
        p += n, len -= (size_t)n;
    }
    if (c->wlen + len > c->wcap) {
        c->wcap = (uint32_t)((c->wlen + len) * 2);
        c->wbuf = realloc(c->wbuf, c->wcap);
    }
    memcpy(c->wbuf + c->wlen, p, len);
    c->wlen += (uint32_t)len;
    flush_out(c);
}

/* Reads after any bytes left from the previous read. Returns the bytes now in RB, 0 on EOF,
 * -1 when there is nothing to read, -2 on error. */
static ssize_t read_more(conn *c) {
    size_t l = c->rlen;
    if (l) memcpy(RB, c->rbuf, l);
    ssize_t n = recv(c->fd, RB + l, RBCAP - l, 0);
    if (n == 0) return 0;
    if (n < 0) return errno == EAGAIN || errno == EINTR ? -1 : -2;
    c->rlen = 0;
    return (ssize_t)l + n;
}

static int keep_leftover(conn *c, const char *p, size_t n) {
    if (n >= RBCAP / 2) return -1; /* a frame this large is not part of any scenario */
    if (n > c->rcap) c->rcap = (uint32_t)n * 2, c->rbuf = realloc(c->rbuf, c->rcap);
    memcpy(c->rbuf, p, n);
    c->rlen = (uint32_t)n;
    return 0;
}

static conn *conn_new(int kind, uint32_t id) {
    conn *c = calloc(1, sizeof *c);
    c->kind = (uint8_t)kind, c->id = id, c->state = S_CLOSED, c->sub_index = -1;
    return c;
}

#define MAX_WS_PORTS 16
static struct sockaddr_in server_addr;
static struct sockaddr_in ws_addrs[MAX_WS_PORTS];
static int n_ws_addrs;

static int conn_connect(conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const struct sockaddr_in *to = &server_addr;
    if (c->kind == K_WS && n_ws_addrs > 0) to = &ws_addrs[c->id % (uint32_t)n_ws_addrs];
    if (connect(c->fd, (const struct sockaddr *)to, sizeof *to) < 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    c->state = S_CONNECTING;
    c->want_out = 1;
    c->rlen = c->wlen = c->woff = 0;
    ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_ADD);
    return 0;
}

static int connect_done(conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    errno = err;
    return err == 0;
}

/* ------------------------------------------------------------------ WebSocket framing */

/* A masked client frame; the mask is fixed, which RFC 6455 servers accept. */
static void ws_send(conn *c, int opcode, const char *p, size_t n) {
    static const uint8_t mask[4] = {0x3a, 0x91, 0x5c, 0x07};
    uint8_t buf[2048 + 8];
    size_t h = 2;
    if (n > 2048) {
        fprintf(stderr, "loadgen: frame too large\n");
        exit(2);
    }
    buf[0] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        buf[1] = (uint8_t)(0x80 | n);
    } else {
        buf[1] = 0x80 | 126, buf[2] = (uint8_t)(n >> 8), buf[3] = (uint8_t)n;
        h = 4;
    }
    memcpy(buf + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) buf[h + i] = (uint8_t)p[i] ^ mask[i & 3];
    conn_write(c, buf, h + n);
}

static size_t ws_frame_header(char *buf, size_t n) { /* unmasked server-to-client header */
    buf[0] = (char)0x81;
    if (n < 126) {
        buf[1] = (char)n;
        return 2;
    }
    buf[1] = 126, buf[2] = (char)(n >> 8), buf[3] = (char)n;
    return 4;
}

static void on_frame(conn *c, int op, char *p, size_t n, uint64_t now);
static void mock_text(conn *c, char *p, size_t n);

/* Parses complete frames in place; returns the bytes consumed. */
static size_t ws_parse(conn *c, char *p, size_t n, uint64_t now) {
    size_t off = 0;
    while (n - off >= 2 && c->state != S_CLOSED) {
        uint8_t b1 = (uint8_t)p[off + 1];
        uint64_t len = b1 & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = (uint64_t)(uint8_t)p[off + 2] << 8 | (uint8_t)p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int k = 0; k < 8; k++) len = len << 8 | (uint8_t)p[off + 2 + k];
            h = 10;
        }
        uint8_t *mask = NULL;
        if (b1 & 0x80) {
            if (n - off < h + 4) break;
            mask = (uint8_t *)p + off + h;
            h += 4;
        }
        if (n - off - h < len) break;
        char *pl = p + off + h;
        if (mask)
            for (uint64_t i = 0; i < len; i++) pl[i] ^= (char)mask[i & 3];
        on_frame(c, p[off] & 0x0f, pl, (size_t)len, now);
        off += h + (size_t)len;
    }
    return off;
}

/* ------------------------------------------------------------------ the client side */

static const char *const ws_request_fmt =
    "GET /app/%s?protocol=7&client=loadgen&version=1.0&flash=false HTTP/1.1\r\n"
    "Host: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

static int channel_name(conn *c, int j, char *out, size_t cap) {
    switch (mode) {
    case M_CLIENT_EVENTS:
        return snprintf(out, cap, "private-bench-%u", c->id / 2);
    case M_HOLD:
        return snprintf(out, cap, "hold-%d-%u", j, c->id % 100);
    default:
        return snprintf(out, cap, "%s", O.channel);
    }
}

static void subscribe_all(conn *c) {
    char ch[128], msg[512], sig[65], tosign[192];
    for (int j = 0; j < c->subs_total; j++) {
        channel_name(c, j, ch, sizeof ch);
        int n;
        if (strncmp(ch, "private-", 8) == 0) {
            int sl = snprintf(tosign, sizeof tosign, "%s:%s", c->socket_id, ch);
            hmac_sha256_hex(O.secret, tosign, (size_t)sl, sig);
            n = snprintf(msg, sizeof msg,
                         "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"%s\","
                         "\"auth\":\"%s:%s\"}}",
                         ch, O.key, sig);
        } else {
            n = snprintf(msg, sizeof msg,
                         "{\"event\":\"pusher:subscribe\",\"data\":{\"channel\":\"%s\"}}", ch);
        }
        ws_send(c, 1, msg, (size_t)n);
    }
    c->state = S_SUBSCRIBING;
}

/* pusher:signin as pusher-js sends it after the app's user authentication endpoint answered:
 * servers that enforce sign-in (soketi with user authentication on) close unsigned sockets after
 * 30 s, which would end any long hold. */
static void signin(conn *c) {
    char user[64], tosign[160], sig[65], msg[384];
    int ul = snprintf(user, sizeof user, "{\\\"id\\\":\\\"bench-%u\\\"}", c->id);
    int sl = snprintf(tosign, sizeof tosign, "%s::user::{\"id\":\"bench-%u\"}", c->socket_id,
                      c->id);
    hmac_sha256_hex(O.secret, tosign, (size_t)sl, sig);
    int n = snprintf(msg, sizeof msg,
                     "{\"event\":\"pusher:signin\",\"data\":{\"user_data\":\"%.*s\","
                     "\"auth\":\"%s:%s\"}}",
                     ul, user, O.key, sig);
    c->state = S_SIGNING;
    ws_send(c, 1, msg, (size_t)n);
}

static void ws_ready(conn *c) {
    c->state = S_READY;
    c->was_ready = 1;
    c->ready_rank = (uint32_t)S.ws_ready;
    S.ws_ready++;
    inflight--;
}

static uint64_t warmup_until; /* latency samples of messages stamped before this are skipped */
static uint64_t t_last_recv;  /* when the last benchmark message arrived: the drain waits for quiet */

static void on_client_text(conn *c, char *p, size_t n, uint64_t now) {
    char *m = memmem(p, n, "\"bt:", 4);
    if (m) { /* a benchmark message: "bt:<send time ns>:<sequence>" */
        uint64_t ts = strtoull(m + 4, NULL, 10);
        S.bench_recv++;
        c->recv_bench++;
        t_last_recv = now;
        if (ts >= warmup_until && now >= ts) {
            hist_add(&hist, now - ts);
            if (O.conns > 0 && c->ready_rank < (uint32_t)O.conns)
                hist_add(&hist_decile[(uint64_t)c->ready_rank * DECILES / (uint64_t)O.conns],
                         now - ts);
        }
        return;
    }
    if (memmem(p, n, "pusher:ping", 11)) {
        static const char pong[] = "{\"event\":\"pusher:pong\",\"data\":{}}";
        ws_send(c, 1, pong, sizeof pong - 1);
        S.pings++, S.pongs++;
        return;
    }
    if (c->state == S_ESTABLISHING && memmem(p, n, "connection_established", 22)) {
        char *s = memmem(p, n, "socket_id", 9), *end = p + n;
        size_t k = 0;
        if (!s) return ws_fail(c, "connection_established without socket_id");
        for (s += 9; s < end && !isdigit((unsigned char)*s); s++) continue;
        while (s < end && (isdigit((unsigned char)*s) || *s == '.') && k < sizeof c->socket_id - 1)
            c->socket_id[k++] = *s++;
        c->socket_id[k] = 0;
        if (O.signin)
            signin(c);
        else if (c->subs_total == 0)
            ws_ready(c);
        else
            subscribe_all(c);
        return;
    }
    if (c->state == S_SIGNING && memmem(p, n, "signin_success", 14)) {
        if (c->subs_total == 0)
            ws_ready(c);
        else
            subscribe_all(c);
        return;
    }
    if (memmem(p, n, "subscription_succeeded", 22)) {
        if (c->state == S_SUBSCRIBING && ++c->subs_ok == c->subs_total) ws_ready(c);
        return;
    }
    if (memmem(p, n, "error", 5)) {
        S.pusher_errors++;
        LOG_ERR("connection %u got %.*s\n", c->id, (int)(n > 300 ? 300 : n), p);
        if (c->state < S_READY) ws_fail(c, "error before ready");
    }
}

static void on_frame(conn *c, int op, char *p, size_t n, uint64_t now) {
    if (op == 9) { /* ping: answer with a pong carrying the same payload */
        if (c->kind == K_WS) S.ws_pings++, S.pongs++;
        ws_send(c, 10, p, n);
        return;
    }
    if (op == 8) {
        int code = n >= 2 ? (uint8_t)p[0] << 8 | (uint8_t)p[1] : 0;
        char why[64];
        snprintf(why, sizeof why, "closed by the peer with code %d", code);
        if (c->kind == K_WS)
            ws_fail(c, why);
        else
            conn_close(c);
        return;
    }
    if (op == 10) return;
    if (c->kind == K_WS)
        on_client_text(c, p, n, now);
    else
        mock_text(c, p, n);
}

static void ws_start(conn *c) {
    if (conn_connect(c) < 0) {
        S.ws_failed++;
        LOG_ERR("connect: %s\n", strerror(errno));
        return;
    }
    inflight++;
}

static void start_more_ws(void) {
    while (started < nws && inflight < O.concurrency) ws_start(ws[started++]);
}

static void on_ws_event(conn *c, uint32_t ev) {
    if (c->state == S_CONNECTING) {
        if (!connect_done(c)) return ws_fail(c, strerror(errno));
        char req[512];
        int n = snprintf(req, sizeof req, ws_request_fmt, O.key, O.host, O.port);
        c->state = S_HANDSHAKE;
        conn_write(c, req, (size_t)n);
        flush_out(c);
        return;
    }
    if (ev & EPOLLOUT) flush_out(c);
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->state == S_CLOSED) return;
    ssize_t len = read_more(c);
    if (len == -1) return;
    if (len <= 0) return ws_fail(c, len == 0 ? "closed by the server" : strerror(errno));
    uint64_t now = now_ns();
    char *p = RB;
    size_t n = (size_t)len;
    if (c->state == S_HANDSHAKE) {
        char *e = memmem(p, n, "\r\n\r\n", 4);
        if (!e) {
            if (keep_leftover(c, p, n) < 0) ws_fail(c, "handshake response too large");
            return;
        }
        if (n < 12 || memcmp(p + 9, "101", 3) != 0) {
            LOG_ERR("handshake refused: %.*s\n", (int)(e - p), p);
            return ws_fail(c, "handshake refused");
        }
        c->state = S_ESTABLISHING;
        n -= (size_t)(e + 4 - p);
        p = e + 4;
    }
    size_t used = ws_parse(c, p, n, now);
    if (c->state != S_CLOSED && used < n && keep_leftover(c, p + used, n - used) < 0)
        ws_fail(c, "frame too large");
}

/* ------------------------------------------------------------------ HTTP triggers */

static time_t sig_second;
static char sig_ts[24];

static void http_send(conn *c) {
    char body[256], md5[33], query[256], tosign[512], sig[65], req[1024];
    uint64_t now = now_ns();
    time_t wall = time(NULL);
    if (wall != sig_second) sig_second = wall, snprintf(sig_ts, sizeof sig_ts, "%ld", (long)wall);
    int bl = snprintf(body, sizeof body,
                      "{\"name\":\"bench\",\"channels\":[\"%s\"],\"data\":\"bt:%llu:%llu\"}",
                      O.channel, (unsigned long long)now, (unsigned long long)S.http_sent);
    md5_hex(body, (size_t)bl, md5);
    snprintf(query, sizeof query, "auth_key=%s&auth_timestamp=%s&auth_version=1.0&body_md5=%s",
             O.key, sig_ts, md5);
    int sl = snprintf(tosign, sizeof tosign, "POST\n/apps/%s/events\n%s", O.app_id, query);
    hmac_sha256_hex(O.secret, tosign, (size_t)sl, sig);
    int rl = snprintf(req, sizeof req,
                      "POST /apps/%s/events?%s&auth_signature=%s HTTP/1.1\r\nHost: %s:%d\r\n"
                      "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                      O.app_id, query, sig, O.host, O.port, bl, body);
    c->state = S_BUSY;
    S.http_sent++;
    conn_write(c, req, (size_t)rl);
}

static int header_has(const char *line, size_t n, const char *name, const char *value) {
    size_t nl = strlen(name);
    if (n < nl || strncasecmp(line, name, nl) != 0) return 0;
    char v[256];
    size_t vl = n - nl < sizeof v - 1 ? n - nl : sizeof v - 1;
    memcpy(v, line + nl, vl);
    v[vl] = 0;
    return strcasestr(v, value) != NULL;
}

/* Length of the first complete response in p (0: incomplete); its status and whether the server
 * announced that it closes the connection (soketi does after every API response). */
static size_t http_response(const char *p, size_t n, int *status, int *closing) {
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    if (!e) return 0;
    size_t hl = (size_t)(e - p) + 4, cl = 0;
    int chunked = 0;
    *status = n > 12 ? atoi(p + 9) : 0;
    *closing = n > 8 && memcmp(p, "HTTP/1.0", 8) == 0;
    for (const char *l = memchr(p, '\n', hl) + 1; l < e;) {
        const char *le = memchr(l, '\r', (size_t)(e + 2 - l));
        size_t ll = (size_t)(le - l);
        if (ll > 15 && strncasecmp(l, "content-length:", 15) == 0) cl = strtoul(l + 15, NULL, 10);
        chunked |= header_has(l, ll, "transfer-encoding:", "chunked");
        *closing |= header_has(l, ll, "connection:", "close");
        l = le + 2;
    }
    if (chunked) {
        const char *t = memmem(p + hl - 2, n - hl + 2, "\n0\r\n\r\n", 6);
        return t ? (size_t)(t + 6 - p) : 0;
    }
    return n >= hl + cl ? hl + cl : 0;
}

static int phase;
enum { PH_CONNECT, PH_SETTLE, PH_RUN, PH_DRAIN };

static void http_open(conn *c) {
    if (conn_connect(c) < 0) {
        S.http_failed++;
        LOG_ERR("http connect: %s\n", strerror(errno));
    }
}

static void http_lost(conn *c, const char *why) {
    if (c->state == S_BUSY) {
        S.http_failed++;
        LOG_ERR("trigger without response: %s\n", why);
    }
    conn_close(c);
    if (phase == PH_RUN) S.http_reconnects++, http_open(c);
}

static void on_http_event(conn *c, uint32_t ev) {
    if (c->state == S_CONNECTING) {
        if (!connect_done(c)) return http_lost(c, strerror(errno));
        c->state = S_READY;
        flush_out(c);
        if (phase == PH_RUN && O.rate == 0) http_send(c);
        return;
    }
    if (ev & EPOLLOUT) flush_out(c);
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->state == S_CLOSED) return;
    ssize_t len = read_more(c);
    if (len == -1) return;
    if (len <= 0) return http_lost(c, len == 0 ? "closed by the server" : strerror(errno));
    size_t off = 0, used;
    int status, closing = 0;
    while ((used = http_response(RB + off, (size_t)len - off, &status, &closing)) > 0) {
        if (status == 200)
            S.http_ok++;
        else {
            S.http_errors++;
            LOG_ERR("trigger answered %.*s\n", (int)(used > 400 ? 400 : used), RB + off);
        }
        off += used;
        c->state = S_READY;
        if (closing) break;
    }
    if (closing) {
        conn_close(c);
        if (phase == PH_RUN) S.http_reconnects++, http_open(c);
        return;
    }
    if (keep_leftover(c, RB + off, (size_t)len - off) < 0) return http_lost(c, "huge response");
    if (c->state == S_READY && phase == PH_RUN && O.rate == 0) http_send(c);
}

/* ------------------------------------------------------------------ mock server (ceiling) */

#define MOCK_MAX_SUBS 65536
#define MOCK_MAX_BATCH 64

/* One write per subscriber, as a server does; with --batch B the write carries B copies, so
 * that the generator, not the loopback cost of the writes, is what runs out of CPU. */
static void mock_broadcast(const char *data, size_t dl) {
    char frame[512 * MOCK_MAX_BATCH], payload[400];
    int pl = snprintf(payload, sizeof payload,
                      "{\"event\":\"bench\",\"channel\":\"bench\",\"data\":\"%.*s\"}", (int)dl, data);
    size_t fl = ws_frame_header(frame, (size_t)pl);
    memcpy(frame + fl, payload, (size_t)pl);
    fl += (size_t)pl;
    for (int b = 1; b < O.batch; b++) memcpy(frame + b * fl, frame, fl);
    for (int i = 0; i < nsubs; i++) conn_write(subs_list[i], frame, fl * (size_t)O.batch);
}

static void mock_text(conn *c, char *p, size_t n) {
    char frame[256];
    const char *reply = NULL;
    if (memmem(p, n, "pusher:subscribe", 16)) {
        reply = "{\"event\":\"pusher_internal:subscription_succeeded\",\"channel\":\"bench\"}";
        if (c->sub_index < 0 && nsubs < MOCK_MAX_SUBS) c->sub_index = nsubs, subs_list[nsubs++] = c;
    } else if (memmem(p, n, "pusher:ping", 11)) {
        reply = "{\"event\":\"pusher:pong\",\"data\":{}}";
    }
    if (!reply) return;
    size_t rl = strlen(reply), h = ws_frame_header(frame, rl);
    memcpy(frame + h, reply, rl);
    conn_write(c, frame, h + rl);
}

static void on_mock_event(conn *c, uint32_t ev) {
    if (ev & EPOLLOUT) flush_out(c);
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->state == S_CLOSED) return;
    ssize_t len = read_more(c);
    if (len == -1) return;
    if (len <= 0) return conn_close(c);
    char *p = RB;
    size_t n = (size_t)len;
    while (c->state == S_HANDSHAKE) {
        char *e = memmem(p, n, "\r\n\r\n", 4);
        if (!e) break;
        size_t hl = (size_t)(e + 4 - p);
        if (memcmp(p, "GET ", 4) == 0) {
            char est[256], frame[300];
            int el = snprintf(est, sizeof est,
                              "{\"event\":\"pusher:connection_established\",\"data\":\"{\\\"socket_id"
                              "\\\":\\\"1.%u\\\",\\\"activity_timeout\\\":30}\"}",
                              c->id);
            static const char ok[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     "Connection: Upgrade\r\nSec-WebSocket-Accept: mock\r\n\r\n";
            size_t h = ws_frame_header(frame, (size_t)el);
            memcpy(frame + h, est, (size_t)el);
            conn_write(c, ok, sizeof ok - 1);
            conn_write(c, frame, h + (size_t)el);
            c->state = S_READY;
            p += hl, n -= hl;
            break;
        }
        *e = 0; /* the header block as a C string, for strcasestr */
        const char *clh = strcasestr(p, "content-length:");
        size_t cl = clh ? strtoul(clh + 15, NULL, 10) : 0;
        *e = '\r';
        if (n < hl + cl) break;
        char *d = memmem(p + hl, cl, "\"data\":\"", 8);
        if (d) {
            char *dend = memchr(d + 8, '"', (size_t)(p + hl + cl - d - 8));
            if (dend) mock_broadcast(d + 8, (size_t)(dend - d - 8));
        }
        static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 2\r\n\r\n{}";
        conn_write(c, resp, sizeof resp - 1);
        p += hl + cl, n -= hl + cl;
    }
    if (c->state == S_READY) {
        size_t used = ws_parse(c, p, n, 0);
        p += used, n -= used;
    }
    if (c->state != S_CLOSED && keep_leftover(c, p, n) < 0) conn_close(c);
}

static void run_mock(void) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)O.listen_port)};
    inet_pton(AF_INET, O.host, &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
        perror("loadgen mock: listen");
        exit(1);
    }
    conn *l = conn_new(K_LISTEN, 0);
    l->fd = lfd;
    ep_set(l, EPOLLIN, EPOLL_CTL_ADD);
    subs_list = calloc(MOCK_MAX_SUBS, sizeof *subs_list);
    fprintf(stderr, "loadgen mock: listening on %s:%d\n", O.host, O.listen_port);
    struct epoll_event evs[1024];
    uint32_t next_id = 1;
    for (;;) {
        int k = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            if (c->kind == K_LISTEN) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *m = conn_new(K_MOCK, next_id++);
                    m->fd = fd, m->state = S_HANDSHAKE;
                    ep_set(m, EPOLLIN, EPOLL_CTL_ADD);
                }
                continue;
            }
            on_mock_event(c, evs[i].events);
            if (c->state == S_CLOSED) free(c->rbuf), free(c->wbuf), free(c);
        }
    }
}

/* ------------------------------------------------------------------ the run */

static uint64_t t_start, t_ready, t_phase, t0, t_stop;
static double cpu_srv0 = -1, cpu_srv1 = -1, cpu_self0, cpu_self1;
static double core_busy0[MAX_CPUS], core_total0[MAX_CPUS], core_busy1[MAX_CPUS], core_total1[MAX_CPUS];
static int ncpus;
static long rss_before, rss_after, rss_end;
static uint64_t recv_at_stop, ok_at_stop, sent_at_stop;
static const char *aborted;

static int jfirst = 1;
static void jnum(const char *k, double v) {
    printf("%s\"%s\": %.10g", jfirst ? "{" : ", ", k, v);
    jfirst = 0;
}

/* Per subscriber: what it should have received minus what it did; a socket that dropped out
 * during the run counts everything it missed. */
static uint64_t lost_messages(void) {
    uint64_t lost = 0;
    for (int i = 0; i < nws; i++) {
        if (!ws[i]->was_ready) continue;
        uint64_t expect = mode == M_CLIENT_EVENTS ? ws[i ^ 1]->sent_events : S.http_ok;
        if (expect > ws[i]->recv_bench) lost += expect - ws[i]->recv_bench;
    }
    return lost;
}

static void finish(void) {
    double win = (double)(t_stop - t0) / 1e9, conn_s = (double)(t_ready - t_start) / 1e9;
    if (aborted) fprintf(stderr, "loadgen: aborted: %s\n", aborted);
    jnum("aborted", aborted != NULL);
    jnum("connections", nws);
    jnum("connections_ready", (double)S.ws_ready);
    jnum("connections_failed", (double)S.ws_failed);
    jnum("disconnects", (double)S.disconnects);
    jnum("pusher_errors", (double)S.pusher_errors);
    jnum("connect_s", conn_s);
    jnum("connect_per_s", conn_s > 0 ? (double)S.ws_ready / conn_s : 0);
    jnum("duration_s", win);
    jnum("loadgen_cpu_pct", win > 0 ? 100 * (cpu_self1 - cpu_self0) / win : -1);
    jnum("server_cpu_pct", cpu_srv0 >= 0 && cpu_srv1 >= 0 && win > 0
                               ? 100 * (cpu_srv1 - cpu_srv0) / win
                               : -1);
    for (int i = 0; i < ncpus; i++) {
        char key[32];
        double t = core_total1[i] - core_total0[i];
        snprintf(key, sizeof key, "cpu%d_busy_pct", i);
        jnum(key, t > 0 ? 100 * (core_busy1[i] - core_busy0[i]) / t : -1);
    }
    jnum("server_rss_before_kib", (double)rss_before);
    jnum("server_rss_after_kib", (double)rss_after);
    jnum("server_rss_end_kib", (double)rss_end);
    if (rss_before > 0 && rss_after > 0 && S.ws_ready > 0)
        jnum("server_rss_per_conn_kib", (double)(rss_after - rss_before) / (double)S.ws_ready);
    if (mode != M_HOLD) {
        jnum("delivered", (double)S.bench_recv);
        jnum("lost", (double)lost_messages());
    }
    if (mode == M_BROADCAST) {
        jnum("triggers_sent", (double)S.http_sent);
        jnum("triggers_ok", (double)S.http_ok);
        jnum("triggers_per_s", win > 0 ? (double)ok_at_stop / win : 0);
        jnum("trigger_errors", (double)S.http_errors);
        jnum("triggers_unanswered", (double)S.http_failed);
        jnum("http_reconnects", (double)S.http_reconnects);
        jnum("expected", (double)(S.http_ok * S.ws_ready));
        jnum("delivered_per_s", win > 0 ? (double)recv_at_stop / win : 0);
    }
    if (mode == M_CLIENT_EVENTS) {
        jnum("events_sent", (double)S.ev_sent);
        jnum("events_per_s", win > 0 ? (double)sent_at_stop / win : 0);
    }
    if (mode == M_HOLD) {
        jnum("pusher_pings", (double)S.pings);
        jnum("ws_pings", (double)S.ws_pings);
        jnum("pongs_sent", (double)S.pongs);
    }
    if (hist.count) {
        jnum("latency_samples", (double)hist.count);
        jnum("latency_p50_ms", hist_quantile_ms(&hist, 0.50));
        jnum("latency_p90_ms", hist_quantile_ms(&hist, 0.90));
        jnum("latency_p99_ms", hist_quantile_ms(&hist, 0.99));
        jnum("latency_max_ms", hist_quantile_ms(&hist, 1.0));
        char key[40];
        for (int d = 0; d < DECILES; d++) {
            if (!hist_decile[d].count) continue;
            static const struct {
                const char *name;
                double q;
            } qs[] = {{"p50", 0.50}, {"p99", 0.99}, {"max", 1.0}};
            for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
                snprintf(key, sizeof key, "latency_decile%d_%s_ms", d, qs[i].name);
                jnum(key, hist_quantile_ms(&hist_decile[d], qs[i].q));
            }
        }
    }
    printf("}\n");
    fflush(stdout);
    struct linger lg = {1, 0}; /* reset instead of FIN: no TIME_WAIT piles up across runs */
    for (int i = 0; i < nws; i++)
        if (ws[i]->state != S_CLOSED) setsockopt(ws[i]->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    exit(aborted ? 3 : 0);
}

static void start_run(uint64_t now) {
    rss_after = proc_rss_kib(O.server_pid);
    cpu_srv0 = proc_cpu_s(O.server_pid);
    cpu_self0 = self_cpu_s();
    ncpus = cpu_busy_s(core_busy0, core_total0);
    fprintf(stderr, "loadgen: measuring\n"); /* the runner starts its profiler on this line */
    t0 = now;
    t_stop = now + (uint64_t)(O.duration * 1e9);
    warmup_until = now + (uint64_t)(fmin(1.0, O.duration / 5) * 1e9);
    phase = PH_RUN;
    if (mode == M_BROADCAST && O.rate == 0)
        for (int i = 0; i < nhc; i++)
            if (hc[i]->state == S_READY) http_send(hc[i]);
}

static void stop_run(uint64_t now) {
    cpu_srv1 = proc_cpu_s(O.server_pid);
    cpu_self1 = self_cpu_s();
    cpu_busy_s(core_busy1, core_total1);
    fprintf(stderr, "loadgen: measured\n");
    recv_at_stop = S.bench_recv, ok_at_stop = S.http_ok, sent_at_stop = S.ev_sent;
    t_stop = now;
    phase = PH_DRAIN;
    t_phase = now;
    if (mode == M_HOLD) rss_end = proc_rss_kib(O.server_pid), finish();
}

static void pace(uint64_t now) {
    uint64_t due = (uint64_t)((double)(now - t0) / 1e9 * O.rate);
    if (mode == M_BROADCAST) {
        for (int i = 0; i < nhc && S.http_sent < due; i++)
            if (hc[i]->state == S_READY) http_send(hc[i]);
        return;
    }
    static int rr;
    char msg[256];
    for (int tries = 0; S.ev_sent < due && tries < nws; tries++) {
        conn *c = ws[rr];
        rr = (rr + 1) % nws;
        if (c->state != S_READY) continue;
        int n = snprintf(msg, sizeof msg,
                         "{\"event\":\"client-bench\",\"channel\":\"private-bench-%u\","
                         "\"data\":\"bt:%llu:%llu\"}",
                         c->id / 2, (unsigned long long)now_ns(), (unsigned long long)S.ev_sent);
        ws_send(c, 1, msg, (size_t)n);
        c->sent_events++;
        S.ev_sent++;
        tries = 0;
    }
}

static int drained(uint64_t now) {
    uint64_t quiet = now - (t_last_recv > t_phase ? t_last_recv : t_phase);
    if (now - t_phase > 15000000000ull) return 1;
    if (mode == M_BROADCAST) {
        for (int i = 0; i < nhc; i++)
            if (hc[i]->state == S_BUSY || hc[i]->state == S_CONNECTING) return 0;
        return S.bench_recv >= S.http_ok * S.ws_ready || quiet > 2000000000ull;
    }
    return S.bench_recv >= S.ev_sent || quiet > 2000000000ull;
}

static void tick(uint64_t now) {
    switch (phase) {
    case PH_CONNECT:
        start_more_ws();
        if (S.ws_ready + S.ws_failed >= (uint64_t)nws) {
            t_ready = now;
            t_phase = now;
            phase = PH_SETTLE;
            for (int i = 0; i < nhc; i++) http_open(hc[i]);
        } else if (now - t_start > (uint64_t)(O.connect_timeout * 1e9)) {
            aborted = "connect timeout";
            t_ready = t0 = t_stop = now;
            finish();
        }
        break;
    case PH_SETTLE:
        if (now - t_phase >= (uint64_t)(O.settle * 1e9)) start_run(now);
        break;
    case PH_RUN:
        if (O.rate > 0) pace(now);
        if (now >= t_stop) stop_run(now);
        break;
    case PH_DRAIN:
        if (drained(now)) finish();
        break;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode broadcast|client-events|hold|mock [--host H] [--port P]\n"
            "  [--app-id ID] [--key K] [--secret S] [--channel C] [--conns N] [--subs K]\n"
            "  [--pairs P] [--rate R] [--http-conns K] [--concurrency C] [--duration S]\n"
            "  [--settle S] [--connect-timeout S] [--server-pid PID] [--signin]\n"
            "  [--listen PORT] [--batch B] [--ws-ports P1,P2,...]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"mode", 1, 0, 'm'},       {"host", 1, 0, 'h'},         {"port", 1, 0, 'p'},
        {"app-id", 1, 0, 'a'},     {"key", 1, 0, 'k'},          {"secret", 1, 0, 's'},
        {"channel", 1, 0, 'C'},    {"conns", 1, 0, 'n'},        {"subs", 1, 0, 'S'},
        {"pairs", 1, 0, 'P'},      {"rate", 1, 0, 'r'},         {"http-conns", 1, 0, 'H'},
        {"concurrency", 1, 0, 'c'}, {"duration", 1, 0, 'd'},    {"settle", 1, 0, 'w'},
        {"connect-timeout", 1, 0, 't'}, {"server-pid", 1, 0, 'i'}, {"listen", 1, 0, 'l'},
        {"batch", 1, 0, 'b'},      {"signin", 0, 0, 'u'},       {"ws-ports", 1, 0, 'W'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': O.mode = optarg; break;
        case 'h': O.host = optarg; break;
        case 'p': O.port = atoi(optarg); break;
        case 'a': O.app_id = optarg; break;
        case 'k': O.key = optarg; break;
        case 's': O.secret = optarg; break;
        case 'C': O.channel = optarg; break;
        case 'n': O.conns = atoi(optarg); break;
        case 'S': O.subs = atoi(optarg); break;
        case 'P': O.pairs = atoi(optarg); break;
        case 'r': O.rate = atof(optarg); break;
        case 'H': O.http_conns = atoi(optarg); break;
        case 'c': O.concurrency = atoi(optarg); break;
        case 'd': O.duration = atof(optarg); break;
        case 'w': O.settle = atof(optarg); break;
        case 't': O.connect_timeout = atof(optarg); break;
        case 'i': O.server_pid = atoi(optarg); break;
        case 'l': O.listen_port = atoi(optarg); break;
        case 'b': O.batch = atoi(optarg); break;
        case 'u': O.signin = 1; break;
        case 'W': O.ws_ports = optarg; break;
        default: usage();
        }
    }
    if (!O.mode) usage();
    if (!strcmp(O.mode, "broadcast")) mode = M_BROADCAST;
    else if (!strcmp(O.mode, "client-events")) mode = M_CLIENT_EVENTS;
    else if (!strcmp(O.mode, "hold")) mode = M_HOLD;
    else if (!strcmp(O.mode, "mock")) mode = M_MOCK;
    else usage();

    for (int i = 0; i < 64; i++) MD5_T[i] = (uint32_t)(uint64_t)floor(fabs(sin(i + 1.0)) * 4294967296.0);
    signal(SIGPIPE, SIG_IGN);
    RB = malloc(RBCAP);
    ep = epoll_create1(0);
    if (mode == M_MOCK) {
        if (O.batch < 1 || O.batch > MOCK_MAX_BATCH) usage();
        run_mock();
    }

    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)O.port);
    if (inet_pton(AF_INET, O.host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }
    for (const char *p = O.ws_ports; p && *p && n_ws_addrs < MAX_WS_PORTS;) {
        ws_addrs[n_ws_addrs] = server_addr;
        ws_addrs[n_ws_addrs++].sin_port = htons((uint16_t)atoi(p));
        p = strchr(p, ',');
        if (p) p++;
    }
    nws = mode == M_CLIENT_EVENTS ? 2 * O.pairs : O.conns;
    nhc = mode == M_BROADCAST ? O.http_conns : 0;
    ws = calloc((size_t)nws + 1, sizeof *ws);
    hc = calloc((size_t)nhc + 1, sizeof *hc);
    for (int i = 0; i < nws; i++) {
        ws[i] = conn_new(K_WS, (uint32_t)i);
        ws[i]->subs_total = (uint16_t)(mode == M_HOLD ? O.subs : 1);
    }
    for (int i = 0; i < nhc; i++) hc[i] = conn_new(K_HTTP, (uint32_t)i);
    rss_before = proc_rss_kib(O.server_pid);
    t_start = now_ns();
    phase = PH_CONNECT;

    struct epoll_event evs[1024];
    uint64_t deadline = t_start + (uint64_t)((O.connect_timeout + O.settle + O.duration + 60) * 1e9);
    for (;;) {
        int timeout = phase == PH_RUN && O.rate > 0 ? 1 : 20;
        int k = epoll_wait(ep, evs, 1024, timeout);
        for (int i = 0; i < k; i++) {
            conn *c = evs[i].data.ptr;
            if (c->kind == K_WS)
                on_ws_event(c, evs[i].events);
            else
                on_http_event(c, evs[i].events);
        }
        uint64_t now = now_ns();
        tick(now);
        if (now > deadline) {
            aborted = "overall deadline";
            finish();
        }
    }
}
