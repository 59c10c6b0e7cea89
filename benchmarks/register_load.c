/* register_load: many LwM2M devices sending one CoAP Register each, for benchmarks/workers.py.
 *
 * Each device is its own UDP socket (its own source address:port, as a real device), bound
 * to 127.0.0.<B + index / per_addr> so that more devices than one address's ephemeral
 * ports fit, and connected to the server. A device sends a CON Register (POST /rd?ep=..
 * &lt=..&lwm2m=1.1&b=U, link format </1/0>,</3/0>,</3303/0>) with RFC 7252 retransmission
 * (ACK_TIMEOUT 2 s x [1, 1.5), doubling, MAX_RETRANSMIT 4; an empty ACK means a separate
 * response follows: wait up to 60 s more), and answers every request of the server
 * (its capability discovery reads) with 4.04 Not Found at once, piggybacked. A device
 * keeps its place in the window of --window devices in flight until its Register got
 * 2.01 AND it answered the server's first request (or --read-wait seconds passed
 * after the 2.01 without one: counted as "noread"), so the server's discovery work is
 * paced with the Registers instead of piling up behind them.
 *
 * The devices are spread over --procs processes (default: as few as the open-files
 * limit allows; RLIMIT_NOFILE's soft limit is raised to the hard one). Driven on
 * stdin/stdout, one JSON line per answer:
 *   start        -> {"ready": true, "pids": [...], ...}   sockets open, nothing sent yet
 *   "go\n"       -> {"finished": true, ...}               every device done, failed or given up
 *   "stop\n"/EOF -> {"stopped": true, "answered": N}     devices stop answering, processes end
 * Times are CLOCK_MONOTONIC seconds (Python's time.monotonic()).
 *
 * Build: gcc -O2 -o register_load register_load.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { IDLE, REGISTERING, WAIT_READ, DONE, FAILED };
enum { CON = 0, NON = 1, ACK = 2, RST = 3 };
#define BUCKETS 80 /* latency histogram: 10 buckets a decade from 10 us */

typedef struct {
    int fd;
    uint16_t mid;
    uint8_t state, tries, separate, read_seen;
    int slot;
    double deadline, timeout, sent_at;
} device_t;

typedef struct {
    uint64_t started, created, done, noread, timeouts, resets, abandoned, not_started, retransmissions;
    uint64_t answered, send_errors, other_codes;
    uint64_t codes[256];
    uint64_t latency[BUCKETS]; /* Register sent (first time) -> 2.01 */
    double t_first, t_last_created, t_last_done;
    int timed_out;
} stats_t;

static struct {
    const char *prefix;
    struct sockaddr_in server;
    long devices, per_addr, per_proc;
    int window, procs, addr_base, lifetime;
    double read_wait, timeout, grace;
} opt = {"wl", {0}, 1000, 10000, 0, 200, 0, 2, 3600, 20.0, 600.0, 30.0};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int write_all(int fd, const void *data, size_t size) {
    const char *p = data;
    while (size) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n, size -= n;
    }
    return 0;
}

static int read_all(int fd, void *data, size_t size) {
    char *p = data;
    while (size) {
        ssize_t n = read(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n, size -= n;
    }
    return 0;
}

/* ------------------------------------------------------------------ CoAP */

static size_t option(uint8_t *out, unsigned *last, unsigned number, const void *value, size_t length) {
    size_t at = 1;
    unsigned delta = number - *last, d, l;
    *last = number;
    if (delta < 13) d = delta;
    else if (delta < 269) d = 13, out[at++] = delta - 13;
    else d = 14, out[at++] = (delta - 269) >> 8, out[at++] = (delta - 269) & 255;
    if (length < 13) l = length;
    else if (length < 269) l = 13, out[at++] = length - 13;
    else l = 14, out[at++] = (length - 269) >> 8, out[at++] = (length - 269) & 255;
    out[0] = d << 4 | l;
    memcpy(out + at, value, length);
    return at + length;
}

static const char LINKS[] = "</1/0>,</3/0>,</3303/0>";

/* The Register of device ``index``; its MID and token are patched in by send_register. */
static size_t build_register(uint8_t *out, long index) {
    char query[96];
    unsigned last = 0;
    size_t at = 8; /* header (4) + token (4) */
    uint8_t content_format = 40; /* application/link-format */
    out[0] = 0x40 | CON << 4 | 4, out[1] = 0x02; /* POST */
    at += option(out + at, &last, 11, "rd", 2);
    at += option(out + at, &last, 12, &content_format, 1);
    at += option(out + at, &last, 15, query, snprintf(query, sizeof query, "ep=%s-%06ld", opt.prefix, index));
    at += option(out + at, &last, 15, query, snprintf(query, sizeof query, "lt=%d", opt.lifetime));
    at += option(out + at, &last, 15, "lwm2m=1.1", 9);
    at += option(out + at, &last, 15, "b=U", 3);
    out[at++] = 0xFF;
    memcpy(out + at, LINKS, sizeof LINKS - 1);
    return at + sizeof LINKS - 1;
}

/* ------------------------------------------------------------------ one process's devices */

static device_t *dev;
static long first, count;   /* global index of dev[0]; devices here */
static int *inflight, nflight;
static stats_t st;
static uint8_t packet[512];

static void record_latency(double seconds) {
    double us = seconds * 1e6;
    int bucket = 0;
    double edge = 10.0 * 1.2589254117941673; /* 10^(1/10) */
    while (bucket < BUCKETS - 1 && us >= edge) edge *= 1.2589254117941673, bucket++;
    st.latency[bucket]++;
}

static void send_register(long i) {
    device_t *d = &dev[i];
    size_t size = build_register(packet, first + i);
    uint32_t token = htonl((uint32_t)(first + i));
    packet[2] = d->mid >> 8, packet[3] = d->mid & 255;
    memcpy(packet + 4, &token, 4);
    if (send(d->fd, packet, size, 0) < 0 && send(d->fd, packet, size, 0) < 0) st.send_errors++;
}

static void release(long i, int state) {
    device_t *d = &dev[i];
    int slot = d->slot;
    d->state = state;
    inflight[slot] = inflight[--nflight];
    dev[inflight[slot]].slot = slot;
    d->slot = -1;
    if (state == DONE) st.done++, st.t_last_done = now();
}

static void start(long i, double t) {
    device_t *d = &dev[i];
    d->state = REGISTERING, d->tries = 0, d->separate = 0;
    d->timeout = 2.0 * (1.0 + 0.5 * (rand() / (RAND_MAX + 1.0)));
    d->deadline = t + d->timeout, d->sent_at = t;
    d->slot = nflight, inflight[nflight++] = i;
    if (!st.started++) st.t_first = t;
    send_register(i);
}

static void answer(device_t *d, const uint8_t *data, ssize_t size) {
    int kind = data[0] >> 4 & 3, tkl = data[0] & 15;
    uint8_t out[4 + 8];
    if (tkl > 8 || size < 4 + tkl) return;
    if (kind == CON) out[0] = 0x40 | ACK << 4 | tkl, out[2] = data[2], out[3] = data[3];
    else out[0] = 0x40 | NON << 4 | tkl, d->mid++, out[2] = d->mid >> 8, out[3] = d->mid & 255;
    out[1] = 0x84; /* 4.04 Not Found */
    memcpy(out + 4, data + 4, tkl);
    if (send(d->fd, out, 4 + tkl, 0) < 0) st.send_errors++;
    st.answered++;
}

static void received(long i, const uint8_t *data, ssize_t size) {
    device_t *d = &dev[i];
    if (size < 4 || data[0] >> 6 != 1) return;
    int kind = data[0] >> 4 & 3, tkl = data[0] & 15, code = data[1];
    uint16_t mid = data[2] << 8 | data[3];
    if (code >= 1 && code < 32) { /* a request of the server's: its discovery read */
        answer(d, data, size);
        if (d->state == WAIT_READ) release(i, DONE);
        else d->read_seen = 1;
        return;
    }
    if (code == 0) { /* empty */
        if (d->state != REGISTERING || mid != d->mid) {
            if (kind == CON) { /* a ping: Reset */
                uint8_t rst[4] = {0x40 | RST << 4, 0, data[2], data[3]};
                send(d->fd, rst, 4, 0);
            }
            return;
        }
        if (kind == ACK) d->separate = 1, d->deadline = now() + 60.0;
        else if (kind == RST) st.resets++, release(i, FAILED);
        return;
    }
    /* a response */
    if (kind == CON) {
        uint8_t ack[4] = {0x40 | ACK << 4, 0, data[2], data[3]};
        send(d->fd, ack, 4, 0);
    }
    uint32_t token = htonl((uint32_t)(first + i));
    if (d->state != REGISTERING || tkl != 4 || size < 8 || memcmp(data + 4, &token, 4) != 0) return;
    if (kind == ACK && mid != d->mid) return;
    st.codes[code]++;
    if (code == 0x41) { /* 2.01 Created */
        double t = now();
        st.created++, st.t_last_created = t;
        record_latency(t - d->sent_at);
        if (d->read_seen) release(i, DONE);
        else d->state = WAIT_READ, d->deadline = t + opt.read_wait;
    } else {
        st.other_codes++;
        release(i, FAILED);
    }
}

static void expire(double t) {
    for (int k = 0; k < nflight;) {
        long i = inflight[k];
        device_t *d = &dev[i];
        if (d->deadline > t) { k++; continue; }
        if (d->state == WAIT_READ) st.noread++, release(i, DONE);
        else if (d->separate || d->tries >= 4) st.timeouts++, release(i, FAILED);
        else {
            d->tries++, st.retransmissions++;
            d->timeout *= 2, d->deadline = t + d->timeout;
            send_register(i);
            k++;
        }
    }
}

static int run_child(int index, long first_, long count_, int window, int go_fd, int out_fd) {
    first = first_, count = count_;
    srand(getpid());
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    dev = calloc(count, sizeof *dev);
    inflight = calloc(window, sizeof *inflight);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!dev || !inflight || ep < 0) die("setup");
    for (long i = 0; i < count; i++) {
        long g = first + i, a = opt.addr_base + g / opt.per_addr;
        struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = 0};
        local.sin_addr.s_addr = htonl(0x7F000000u | (uint32_t)a);
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket (raise the open-files limit or use more --procs)");
        if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) die("bind (fewer --per-addr?)");
        if (connect(fd, (struct sockaddr *)&opt.server, sizeof opt.server) < 0) die("connect");
        struct epoll_event event = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &event) < 0) die("epoll_ctl");
        dev[i] = (device_t){.fd = fd, .mid = (uint16_t)(g * 7), .slot = -1};
    }
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, go_fd, &event) < 0) die("epoll_ctl go");
    char byte = 'R';
    if (write_all(out_fd, &byte, 1) < 0 || read_all(go_fd, &byte, 1) < 0) return 1; /* ready; wait for go */

    double t0 = now(), last_scan = t0, stop_starting = t0 + opt.timeout;
    long next = 0;
    int finished = 0, stopping = 0;
    struct epoll_event events[1024];
    uint8_t data[1600];
    (void)index;
    while (!stopping) {
        double t = now();
        if (!finished) {
            if (t >= stop_starting) {
                if (!st.timed_out) st.timed_out = 1, st.not_started = count - next, next = count;
                if (t >= stop_starting + opt.grace)
                    while (nflight) st.abandoned++, release(inflight[0], FAILED);
            }
            while (nflight < window && next < count) start(next++, t);
            if (next == count && nflight == 0) { /* everything answered, failed or given up */
                finished = 1;
                if (write_all(out_fd, &st, sizeof st) < 0) return 1;
            }
        }
        int n = epoll_wait(ep, events, 1024, nflight ? 20 : 200);
        for (int k = 0; k < n; k++) {
            uint64_t i = events[k].data.u64;
            if (i == UINT64_MAX) { stopping = 1; continue; } /* "stop" (or the parent died) */
            for (;;) {
                ssize_t size = recv(dev[i].fd, data, sizeof data, 0);
                if (size < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    continue; /* ICMP port unreachable and the like: read on */
                }
                received((long)i, data, size);
            }
        }
        t = now();
        if (t - last_scan >= 0.01) expire(t), last_scan = t;
    }
    return write_all(out_fd, &st.answered, sizeof st.answered) < 0;
}

/* ------------------------------------------------------------------ the parent */

static void json_stats(const stats_t *s, double t_go) {
    uint64_t total = 0, seen = 0;
    double p50 = 0, p99 = 0, edge;
    for (int b = 0; b < BUCKETS; b++) total += s->latency[b];
    edge = 10.0;
    for (int b = 0; b < BUCKETS; b++) {
        edge *= 1.2589254117941673;
        seen += s->latency[b];
        if (!p50 && total && seen * 2 >= total) p50 = edge / 1e3;
        if (!p99 && total && seen * 100 >= total * 99) p99 = edge / 1e3;
    }
    printf("{\"finished\": true, \"devices\": %ld, \"started\": %llu, \"created\": %llu, \"done\": %llu, "
           "\"noread\": %llu, \"timeouts\": %llu, \"resets\": %llu, \"other_codes\": %llu, \"abandoned\": %llu, "
           "\"not_started\": %llu, \"timed_out\": %s, \"retransmissions\": %llu, \"answered\": %llu, "
           "\"send_errors\": %llu, \"t_go\": %.6f, \"t_first\": %.6f, \"t_last_created\": %.6f, "
           "\"t_last_done\": %.6f, \"latency_p50_ms_le\": %.3f, \"latency_p99_ms_le\": %.3f, \"codes\": {",
           opt.devices, (unsigned long long)s->started, (unsigned long long)s->created, (unsigned long long)s->done,
           (unsigned long long)s->noread, (unsigned long long)s->timeouts, (unsigned long long)s->resets,
           (unsigned long long)s->other_codes, (unsigned long long)s->abandoned,
           (unsigned long long)s->not_started, s->timed_out ? "true" : "false",
           (unsigned long long)s->retransmissions, (unsigned long long)s->answered,
           (unsigned long long)s->send_errors, t_go, s->t_first, s->t_last_created, s->t_last_done, p50, p99);
    const char *comma = "";
    for (int c = 0; c < 256; c++)
        if (s->codes[c]) printf("%s\"%d.%02d\": %llu", comma, c >> 5, c & 31, (unsigned long long)s->codes[c]), comma = ", ";
    printf("}}\n");
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr, "usage: register_load --server HOST:PORT --devices N [--window W] [--procs P] [--per-proc N]\n"
                    "  [--per-addr N] [--addr-base B] [--prefix P] [--lifetime S] [--read-wait S] [--timeout S]\n"
                    "  [--grace S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int a = 1; a < argc; a++) {
        const char *name = argv[a], *value = a + 1 < argc ? argv[a + 1] : NULL;
        if (!value) usage();
        a++;
        if (!strcmp(name, "--server")) {
            char host[64];
            const char *colon = strrchr(value, ':');
            if (!colon || colon - value >= (long)sizeof host) usage();
            memcpy(host, value, colon - value), host[colon - value] = 0;
            opt.server.sin_family = AF_INET, opt.server.sin_port = htons(atoi(colon + 1));
            if (inet_pton(AF_INET, host, &opt.server.sin_addr) != 1) usage();
        } else if (!strcmp(name, "--devices")) opt.devices = atol(value);
        else if (!strcmp(name, "--window")) opt.window = atoi(value);
        else if (!strcmp(name, "--procs")) opt.procs = atoi(value);
        else if (!strcmp(name, "--per-proc")) opt.per_proc = atol(value);
        else if (!strcmp(name, "--per-addr")) opt.per_addr = atol(value);
        else if (!strcmp(name, "--addr-base")) opt.addr_base = atoi(value);
        else if (!strcmp(name, "--prefix")) opt.prefix = value;
        else if (!strcmp(name, "--lifetime")) opt.lifetime = atoi(value);
        else if (!strcmp(name, "--read-wait")) opt.read_wait = atof(value);
        else if (!strcmp(name, "--timeout")) opt.timeout = atof(value);
        else if (!strcmp(name, "--grace")) opt.grace = atof(value);
        else usage();
    }
    if (!opt.server.sin_port || opt.devices < 1 || opt.window < 1 || opt.per_addr < 1) usage();
    if (opt.addr_base + (opt.devices - 1) / opt.per_addr > 0xFFFFFE) usage();
    signal(SIGPIPE, SIG_IGN);
    if (!opt.per_proc) { /* as many devices as the open-files limit lets one process hold */
        struct rlimit limit;
        getrlimit(RLIMIT_NOFILE, &limit);
        opt.per_proc = (limit.rlim_max == RLIM_INFINITY ? 1000000 : (long)limit.rlim_max) - 64;
    }
    if (!opt.procs) opt.procs = (int)((opt.devices + opt.per_proc - 1) / opt.per_proc);
    if (opt.procs > opt.devices) opt.procs = (int)opt.devices;
    if (opt.window < opt.procs) opt.window = opt.procs;

    int go[opt.procs], out[opt.procs];
    pid_t pids[opt.procs];
    long at = 0;
    for (int p = 0; p < opt.procs; p++) {
        long share = opt.devices / opt.procs + (p < opt.devices % opt.procs);
        int window = opt.window / opt.procs + (p < opt.window % opt.procs);
        int go_pipe[2], out_pipe[2];
        if (pipe2(go_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0) die("pipe");
        pids[p] = fork();
        if (pids[p] < 0) die("fork");
        if (pids[p] == 0) {
            for (int q = 0; q < p; q++) close(go[q]), close(out[q]);
            close(go_pipe[1]), close(out_pipe[0]);
            _exit(run_child(p, at, share, window, go_pipe[0], out_pipe[1]));
        }
        close(go_pipe[0]), close(out_pipe[1]);
        go[p] = go_pipe[1], out[p] = out_pipe[0];
        at += share;
    }
    for (int p = 0; p < opt.procs; p++) {
        char byte;
        if (read_all(out[p], &byte, 1) < 0) {
            fprintf(stderr, "register_load: process %d failed while opening its sockets\n", p);
            return 1;
        }
    }
    printf("{\"ready\": true, \"devices\": %ld, \"procs\": %d, \"window\": %d, \"addresses\": %ld, \"pids\": [",
           opt.devices, opt.procs, opt.window, (opt.devices - 1) / opt.per_addr + 1);
    for (int p = 0; p < opt.procs; p++) printf("%s%d", p ? ", " : "", (int)pids[p]);
    printf("]}\n");
    fflush(stdout);

    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double t_go = now();
    for (int p = 0; p < opt.procs; p++) write_all(go[p], "g", 1);
    stats_t all = {0}, one;
    all.t_first = 1e300;
    for (int p = 0; p < opt.procs; p++) {
        if (read_all(out[p], &one, sizeof one) < 0) {
            fprintf(stderr, "register_load: process %d ended early\n", p);
            return 1;
        }
        uint64_t *sum = (uint64_t *)&all, *add = (uint64_t *)&one;
        for (size_t k = 0; k < offsetof(stats_t, t_first) / sizeof(uint64_t); k++) sum[k] += add[k];
        if (one.started && one.t_first < all.t_first) all.t_first = one.t_first;
        if (one.t_last_created > all.t_last_created) all.t_last_created = one.t_last_created;
        if (one.t_last_done > all.t_last_done) all.t_last_done = one.t_last_done;
        all.timed_out |= one.timed_out;
    }
    if (!all.started) all.t_first = t_go;
    json_stats(&all, t_go);

    while (fgets(line, sizeof line, stdin) && strncmp(line, "stop", 4) != 0) {}
    uint64_t answered = 0, more;
    for (int p = 0; p < opt.procs; p++) close(go[p]);
    for (int p = 0; p < opt.procs; p++)
        if (read_all(out[p], &more, sizeof more) == 0) answered += more;
    for (int p = 0; p < opt.procs; p++) waitpid(pids[p], NULL, 0);
    printf("{\"stopped\": true, \"answered\": %llu}\n", (unsigned long long)answered);
    fflush(stdout);
    return 0;
}
