/*
 * qtwire: an impairing "wire" between two network interfaces, for kernels without sch_netem.
 *
 * It runs in a middle network namespace that owns two veth ends, A and B, and copies every
 * Ethernet frame from A to B and from B to A through raw AF_PACKET sockets.  Per direction
 * it applies, in this order (the order netem uses):
 *   1. blackhole ("down"): drop everything, the link stays up;
 *   2. MTU: a frame whose IP packet (the frame less its 14-byte Ethernet header) is longer
 *      than mtu bytes is dropped without a word, as a link with a smaller MTU whose routers
 *      send no ICMP does (a path MTU black hole); mtu=0 carries whatever the veths carry;
 *   3. loss: random (probability in percent), or bursty by the Gilbert-Elliott model when
 *      ge_p_pct > 0 (a good and a bad state; per packet, good -> bad with probability p and
 *      bad -> good with r, then the packet is lost with the loss probability of the state it
 *      was in: ge_good_loss_pct, ge_bad_loss_pct) — netem's "loss gemodel p r 1-h 1-k", step
 *      for step, so both backends draw the same process;
 *   4. a drop-tail rate queue (rate in bit/s, limit in packets and/or bytes): a packet that
 *      arrives when the queue is full is dropped, otherwise it waits in the queue (a FIFO of
 *      the frames themselves) until the packets ahead of it and itself have been serialised
 *      at the rate in force while it is served (a new rate applies to what is queued, from the
 *      frame being serialised on, as a qdisc's does) — or, with
 *      a trace (Mahimahi's format: one line per delivery opportunity, its time in ms from the
 *      start, looped at the last line's time), at the delivery opportunities: each carries
 *      1500 bytes of IP packet (the Ethernet header not counted), a packet leaves at the
 *      opportunity that carries its last byte, opportunities that pass while the queue is
 *      empty are lost (as in Mahimahi's link queue);
 *   5. a fixed one-way delay plus uniform jitter in [-jitter, +jitter] (netem's default
 *      distribution); without "reorder" a packet never overtakes the one before it, and one
 *      held back behind a later-drawn predecessor leaves no earlier than that predecessor plus
 *      its own serialisation time (netem's max(last, now + delay) + packet time): without it
 *      a jittered 50 Mbit/s link let bunches out at ~200 Mbit/s over a millisecond. Under load
 *      this turns jitter into extra delay: while frames follow each other closely, each is
 *      held to the latest delay drawn so far, so a busy link sits near delay + jitter with
 *      little spread (netem with a rate does the same; README "Link impairment without netem").
 * "down" drops everything: what arrives, and what the rate queue and the delay line hold when
 * it is set (a real link's dead radio delivers nothing it still had queued). A frame due while
 * an interface is set down (a carrier loss, testbed/lab.py access_down) counts as drop_down too.
 * A "set" is all or nothing: every key is checked (a trace file read) before any is applied.
 * Frames are timed on CLOCK_MONOTONIC with a timerfd armed for the earliest departure, so the
 * added delay is accurate to tens of microseconds, not to a scheduler tick.
 *
 * Runtime control: a UNIX stream socket; one line per connection, one line answered.
 *   set <ab|ba|both> key=value ...   keys: delay_us jitter_us reorder loss_pct rate_bps
 *                                          limit_pkts limit_bytes down mtu ge_p_pct
 *                                          ge_r_pct ge_good_loss_pct ge_bad_loss_pct
 *                                          trace=<file> (empty: off)              -> "ok"
 *   get                                -> "ab k=v ... | ba k=v ..." (settings and counters)
 *   stats                              -> "ab k=v ... | ba k=v ...": how late departures were
 *                                         since the last stats (late_max_us, late_mean_us,
 *                                         departures; then reset) and the cumulative faults
 *                                         of the shaper itself (tx_err, drop_cap, kernel_drops:
 *                                         frames the packet socket's buffer overflowed with
 *                                         while qtwire was not scheduled), which a measurement
 *                                         must not hide (testbed/shaping.py ShaperWindow)
 *   seed <n>                           -> "ok": each direction's random draws start afresh
 *                                         from n (a 64-bit unsigned integer), loss and jitter
 *                                         each from a stream of their own, so the k-th frame
 *                                         a direction admits meets the same loss draw for the
 *                                         same n whatever the timing (an experiment's point
 *                                         seed, experiments/runner.py); unseeded, the streams
 *                                         start from the clock and the pid
 *   quit                               -> "ok", then exit
 * The rate counts whole Ethernet frames (header included, no preamble/FCS), as netem does.
 *
 * The veths on both sides must have checksum/TSO/GSO/GRO offload off: frames copied by a
 * packet socket keep a partial checksum otherwise, and TCP fails.
 *
 * Usage: qtwire <ifname-A> <ifname-B> <control-socket-path>
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX 65536
#define HARD_CAP_PKTS (1 << 18) /* bound on frames held per direction, whatever the settings */
#define RX_BATCH 64
#define ETH_HEADER_BYTES 14 /* the veths carry untagged Ethernet frames */

struct pkt {
    uint64_t due_ns; /* when it leaves the wire */
    uint64_t seq;    /* arrival order, breaks ties so equal times keep FIFO order */
    uint32_t len;
    unsigned char data[];
};

struct direction {
    const char *name;
    int rx_fd, tx_fd;
    /* settings */
    uint64_t delay_ns, jitter_ns, rate_bps, limit_pkts, limit_bytes, mtu;
    double loss_pct;
    double ge_p, ge_r, ge_good_loss, ge_bad_loss; /* Gilbert-Elliott, percent; off when ge_p == 0 */
    int ge_bad;                                   /* the model's state: 1 = bad */
    /* trace-driven rate: opportunity times (ms), the loop's period, where the walk is */
    uint64_t *trace_ms;
    size_t trace_len, trace_pos;
    uint64_t trace_period_ms, trace_loop, trace_start_ns, trace_last_leave_ns;
    uint32_t opp_left; /* bytes the current opportunity can still carry */
    char trace_name[256], trace_path[512];
    int reorder, down;
    /* random streams (xorshift64* states): one for loss, one for jitter, so that jitter drawn
       at service times cannot shift which frame meets which loss draw; seed is what "seed"
       set (printed by "get"), seeded 0 while they come from the clock */
    uint64_t loss_rng, jitter_rng, seed;
    int seeded;
    /* delay line: binary min-heap on (due_ns, seq) */
    struct pkt **heap;
    size_t heap_len, heap_cap;
    uint64_t last_due_ns; /* the previous frame's departure from the wire */
    /* rate queue: ring of the frames not yet serialised, the first one being served; it
       leaves the queue at head_done_ns */
    struct pkt **ring;
    size_t ring_head, ring_len, ring_cap;
    uint64_t queued_bytes, head_start_ns, head_done_ns;
    /* counters */
    uint64_t rx, tx, drop_loss, drop_queue, drop_down, drop_mtu, drop_cap, tx_err;
    uint64_t kernel_drops; /* the rx socket's overflows (PACKET_STATISTICS), summed */
    /* departures since the last "stats": how late each left after its due time */
    uint64_t late_max_ns, late_sum_ns, late_n;
};

static volatile sig_atomic_t stop_requested;
static uint64_t seq_counter;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *state) { /* xorshift64*: fast and good enough for loss and jitter */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1Dull;
}

static double rng_unit(uint64_t *state) {
    return (double)(rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* splitmix64's output step: spreads nearby seeds (1, 2, 3 ...) over the whole state space;
   xorshift must not start at 0, which splitmix64 of a nonzero input never is in practice */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x ? x : 0x9E3779B97F4A7C15ull;
}

/* Start d's two random streams from seed, and the Gilbert-Elliott model in its good state (a
   point must not inherit the bad state the one before left); `lane` tells the directions
   apart. */
static void seed_direction(struct direction *d, uint64_t seed, uint64_t lane) {
    d->loss_rng = mix64(mix64(seed) ^ (2 * lane + 1));
    d->jitter_rng = mix64(mix64(seed) ^ (2 * lane + 2));
    d->seed = seed;
    d->ge_bad = 0;
}

static int pkt_before(const struct pkt *a, const struct pkt *b) {
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static int heap_push(struct direction *d, struct pkt *p) {
    if (d->heap_len == d->heap_cap) {
        size_t cap = d->heap_cap ? d->heap_cap * 2 : 1024;
        struct pkt **h = realloc(d->heap, cap * sizeof(*h));
        if (!h) return -1;
        d->heap = h;
        d->heap_cap = cap;
    }
    size_t i = d->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pkt_before(p, d->heap[parent])) break;
        d->heap[i] = d->heap[parent];
        i = parent;
    }
    d->heap[i] = p;
    return 0;
}

static struct pkt *heap_pop(struct direction *d) {
    struct pkt *top = d->heap[0];
    struct pkt *last = d->heap[--d->heap_len];
    size_t i = 0, n = d->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && pkt_before(d->heap[child + 1], d->heap[child])) child++;
        if (!pkt_before(d->heap[child], last)) break;
        d->heap[i] = d->heap[child];
        i = child;
    }
    if (n) d->heap[i] = last;
    return top;
}

static int ring_push(struct direction *d, struct pkt *p) {
    if (d->ring_len == d->ring_cap) {
        size_t cap = d->ring_cap ? d->ring_cap * 2 : 1024;
        struct pkt **r = malloc(cap * sizeof(*r));
        if (!r) return -1;
        for (size_t i = 0; i < d->ring_len; i++) r[i] = d->ring[(d->ring_head + i) % d->ring_cap];
        free(d->ring);
        d->ring = r;
        d->ring_head = 0;
        d->ring_cap = cap;
    }
    d->ring[(d->ring_head + d->ring_len) % d->ring_cap] = p;
    d->ring_len++;
    d->queued_bytes += p->len;
    return 0;
}

static struct pkt *ring_pop(struct direction *d) {
    struct pkt *p = d->ring[d->ring_head];
    d->ring_head = (d->ring_head + 1) % d->ring_cap;
    d->ring_len--;
    d->queued_bytes -= p->len;
    return p;
}

/* Whether the Gilbert-Elliott model loses this packet (netem's loss_gilb_ell): the state moves
 * first, the loss is drawn with the probability of the state the packet arrived in. */
static int ge_lost(struct direction *d) {
    if (!d->ge_bad) {
        if (rng_unit(&d->loss_rng) * 100.0 < d->ge_p) d->ge_bad = 1;
        return rng_unit(&d->loss_rng) * 100.0 < d->ge_good_loss;
    }
    if (rng_unit(&d->loss_rng) * 100.0 < d->ge_r) d->ge_bad = 0;
    return rng_unit(&d->loss_rng) * 100.0 < d->ge_bad_loss;
}

#define OPPORTUNITY_BYTES 1500u /* Mahimahi: one MTU-sized packet per delivery opportunity */

static uint64_t opp_time(const struct direction *d) {
    return d->trace_start_ns +
           (d->trace_loop * d->trace_period_ms + d->trace_ms[d->trace_pos]) * 1000000ull;
}

static void opp_next(struct direction *d) {
    if (++d->trace_pos == d->trace_len) { d->trace_pos = 0; d->trace_loop++; }
    d->opp_left = OPPORTUNITY_BYTES;
}

/* When a frame of len bytes admitted at now leaves the trace-driven queue. */
static uint64_t trace_leave(struct direction *d, uint32_t len, uint64_t now) {
    uint32_t need = len > ETH_HLEN ? len - ETH_HLEN : 1;
    if (d->trace_last_leave_ns <= now && opp_time(d) < now) {
        /* the queue is empty: the opportunities until now are lost (whole loops skipped) */
        uint64_t period_ns = d->trace_period_ms * 1000000ull;
        uint64_t behind = now - opp_time(d);
        if (behind > period_ns) d->trace_loop += behind / period_ns;
        while (opp_time(d) < now) opp_next(d);
    }
    while (need > d->opp_left) { need -= d->opp_left; opp_next(d); }
    d->opp_left -= need;
    return d->trace_last_leave_ns = opp_time(d);
}

/* Read a Mahimahi trace: its opportunity times (ms, ascending; a line may end in spaces or a
 * CR), *len of them; NULL if the file cannot be used (a period of 0 ms would never advance). */
static uint64_t *read_trace(const char *path, size_t *len) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    uint64_t *times = NULL;
    size_t n = 0, cap = 0;
    unsigned long long v, last = 0;
    int ok = 1;
    char line[64];
    while (ok && fgets(line, sizeof(line), f)) {
        char *end;
        char *first = line;
        while (*first == ' ' || *first == '\t') first++;
        /* blank (spaces only, as Python's reader skips them too) or a comment */
        if (*first == '\n' || *first == '\r' || *first == '#' || !*first) continue;
        if (*first == '-') { ok = 0; break; } /* strtoull would wrap it */
        v = strtoull(line, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r') end++;
        if (end == line || (*end && *end != '\n') || v < last) { ok = 0; break; }
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            uint64_t *t = realloc(times, cap * sizeof(*t));
            if (!t) { ok = 0; break; }
            times = t;
        }
        times[n++] = v;
        last = v;
    }
    fclose(f);
    if (!ok || !n || last == 0) { free(times); return NULL; }
    *len = n;
    return times;
}

static uint64_t serve_time(struct direction *d, const struct pkt *p, uint64_t start);
static void serve_queue(struct direction *d, uint64_t now);

/* Start serving the head of the rate queue at `start` (the previous one's end, or its own
 * arrival into an empty queue). */
static void serve_head(struct direction *d, uint64_t start) {
    d->head_start_ns = start;
    d->head_done_ns = d->ring_len ? serve_time(d, d->ring[d->ring_head], start) : 0;
}

/* Load a Mahimahi trace into d (replacing any, which stays if this one cannot be read); 0,
 * or -1. */
static int load_trace(struct direction *d, const char *path, uint64_t now) {
    /* the same trace again, or still none (another setting changed): keep the timeline and
       the frame being served going */
    if (d->trace_len ? !strcmp(path, d->trace_path) : !*path) return 0;
    uint64_t *times = NULL;
    size_t len = 0;
    if (*path && !(times = read_trace(path, &len))) return -1;
    serve_queue(d, now); /* frames already due leave at the old pace, not one more service */
    free(d->trace_ms);
    d->trace_ms = times;
    d->trace_len = len;
    d->trace_path[0] = 0;
    d->trace_name[0] = 0;
    if (len) {
        d->trace_period_ms = times[len - 1];
        d->trace_pos = 0;
        d->trace_loop = 0;
        d->trace_start_ns = now;
        d->trace_last_leave_ns = 0;
        d->opp_left = OPPORTUNITY_BYTES;
        snprintf(d->trace_path, sizeof(d->trace_path), "%s", path);
        const char *base = strrchr(path, '/');
        snprintf(d->trace_name, sizeof(d->trace_name), "%s", base ? base + 1 : path);
    }
    serve_head(d, now); /* the frame being served goes at the new trace's pace from now */
    return 0;
}

/* When a frame served from `start` on leaves the rate queue: its serialisation at the rate,
 * or the trace's opportunity that carries its last byte. */
static uint64_t serve_time(struct direction *d, const struct pkt *p, uint64_t start) {
    if (d->trace_len) return trace_leave(d, p->len, start);
    if (!d->rate_bps) return start;
    return start + (uint64_t)p->len * 8ull * 1000000000ull / d->rate_bps;
}

/* Put a frame that left the rate queue at `leave`, after `service` ns of serialisation, on
 * the delay line. */
static void to_delay_line(struct direction *d, struct pkt *p, uint64_t leave, uint64_t service) {
    int64_t delay = (int64_t)d->delay_ns;
    if (d->jitter_ns) {
        int64_t j = (int64_t)d->jitter_ns;
        delay += (int64_t)(rng_next(&d->jitter_rng) % (uint64_t)(2 * j + 1)) - j;
        if (delay < 0) delay = 0;
    }
    uint64_t due = leave + (uint64_t)delay;
    /* not before the frame ahead, nor closer to it than its own serialisation (netem's
       max(last, now + delay) + packet time): a frame held back keeps the link's pace */
    if (!d->reorder && due < d->last_due_ns + service) due = d->last_due_ns + service;
    d->last_due_ns = due;
    p->due_ns = due;
    if (heap_push(d, p) < 0) { free(p); d->drop_cap++; }
}

/* Move the frames whose serialisation has ended by `now` from the rate queue to the delay
 * line, each next one served from the end of the one before. */
static void serve_queue(struct direction *d, uint64_t now) {
    while (d->ring_len && d->head_done_ns <= now) {
        uint64_t leave = d->head_done_ns, service = leave - d->head_start_ns;
        to_delay_line(d, ring_pop(d), leave, service);
        serve_head(d, leave);
    }
}

/* Admit one received frame into direction d, or count why it was dropped. */
static void admit(struct direction *d, const unsigned char *buf, uint32_t len, uint64_t now) {
    d->rx++;
    serve_queue(d, now); /* what has left by now first: the new frame is served from now on */
    if (d->down) { d->drop_down++; return; }
    if (d->mtu && len > d->mtu + ETH_HEADER_BYTES) { d->drop_mtu++; return; }
    if (d->ge_p > 0) {
        if (ge_lost(d)) { d->drop_loss++; return; }
    } else if (d->loss_pct > 0 && rng_unit(&d->loss_rng) * 100.0 < d->loss_pct) { d->drop_loss++; return; }
    if (d->heap_len + d->ring_len >= HARD_CAP_PKTS) { d->drop_cap++; return; }
    int queued = d->rate_bps || d->trace_len;
    if (queued && ((d->limit_pkts && d->ring_len + 1 > d->limit_pkts) ||
                   (d->limit_bytes && d->queued_bytes + len > d->limit_bytes))) {
        d->drop_queue++;
        return;
    }
    struct pkt *p = malloc(sizeof(*p) + len);
    if (!p) { d->drop_cap++; return; }
    p->seq = seq_counter++;
    p->len = len;
    memcpy(p->data, buf, len);
    if (!queued && !d->ring_len) { to_delay_line(d, p, now, 0); return; }
    if (ring_push(d, p) < 0) { free(p); d->drop_cap++; return; }
    if (d->ring_len == 1) serve_head(d, now); /* an empty queue serves it at once */
    serve_queue(d, now);
}

/* Drop what the rate queue and the delay line hold (the link went down). */
static void flush(struct direction *d) {
    while (d->ring_len) { free(ring_pop(d)); d->drop_down++; }
    while (d->heap_len) { free(heap_pop(d)); d->drop_down++; }
    d->head_done_ns = 0;
}

/* Count one send's outcome. A send the kernel refuses with ENETDOWN went to an interface set
 * down: the lab took the link's carrier away (testbed/lab.py access_down sets both of this
 * middle's veth ends down), and the frame is lost to the dead link as those "down" drops are,
 * not by a fault of the shaper's; counting it in tx_err flagged every frame in flight at a
 * link-down as if the machine had been too busy (experiments/shaper_meter.py). */
static void count_send(struct direction *d, ssize_t sent, uint32_t len, int err) {
    if (sent == (ssize_t)len) d->tx++;
    else if (sent < 0 && err == ENETDOWN) d->drop_down++;
    else d->tx_err++;
}

static void deliver_due(struct direction *d, uint64_t now) {
    serve_queue(d, now);
    while (d->heap_len && d->heap[0]->due_ns <= now) {
        struct pkt *p = heap_pop(d);
        /* late: the loop woke after the due time (qtwire not scheduled, a busy machine) */
        uint64_t late = now - p->due_ns;
        if (late > d->late_max_ns) d->late_max_ns = late;
        d->late_sum_ns += late;
        d->late_n++;
        ssize_t sent = send(d->tx_fd, p->data, p->len, MSG_DONTWAIT);
        count_send(d, sent, p->len, sent < 0 ? errno : 0);
        free(p);
    }
}

static void receive_batch(struct direction *d, unsigned char *buf) {
    for (int i = 0; i < RX_BATCH; i++) {
        struct sockaddr_ll from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(d->rx_fd, buf, FRAME_MAX, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) return;
        if (from.sll_pkttype == PACKET_OUTGOING) continue; /* our own transmissions */
        admit(d, buf, (uint32_t)n, now_ns());
    }
}

static int open_packet_socket(const char *ifname) {
    int ifindex = (int)if_nametoindex(ifname);
    if (!ifindex) { fprintf(stderr, "qtwire: no interface %s\n", ifname); return -1; }
    /* Protocol 0 first so nothing is captured from other interfaces before bind(). */
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("qtwire: socket(AF_PACKET)"); return -1; }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) { perror("qtwire: bind"); close(fd); return -1; }
    int one = 1, bufsz = 8 << 20;
#ifdef PACKET_IGNORE_OUTGOING
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
#endif
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsz, sizeof(bufsz));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsz, sizeof(bufsz));
    return fd;
}

/* A new rate: the frame being serialised finishes its remaining bits at it (it used to
 * restart every queued frame's timing from scratch on any set, and the link carried more than
 * its rate after each: +54 % over a ramp that re-sent its settings every 0.25 s). */
static void set_rate(struct direction *d, uint64_t bps, uint64_t now) {
    uint64_t old = d->rate_bps;
    if (bps == old) return;
    serve_queue(d, now); /* what left at the old rate before now has left */
    d->rate_bps = bps;
    if (!d->ring_len || d->trace_len) return;
    if (!old || !bps || d->head_done_ns <= now) {
        serve_head(d, now);
    } else {
        double left_ns = (double)(d->head_done_ns - now) * (double)old / (double)bps;
        d->head_done_ns = now + (uint64_t)left_ns;
    }
}

/* Apply key=val to d at `now`; with `check` set only say whether it would be accepted (a set
 * checks every key before it applies any). 0, or -1 for a bad key or value. */
static int apply_setting(struct direction *d, const char *key, const char *val, uint64_t now,
                         int check) {
    char *end;
    if (!strcmp(key, "trace")) {
        if (!check) return load_trace(d, val, now);
        if (!*val || (d->trace_len && !strcmp(val, d->trace_path))) return 0;
        size_t len;
        uint64_t *times = read_trace(val, &len);
        free(times);
        return times ? 0 : -1;
    }
    double *percent = !strcmp(key, "loss_pct")           ? &d->loss_pct
                      : !strcmp(key, "ge_p_pct")         ? &d->ge_p
                      : !strcmp(key, "ge_r_pct")         ? &d->ge_r
                      : !strcmp(key, "ge_good_loss_pct") ? &d->ge_good_loss
                      : !strcmp(key, "ge_bad_loss_pct")  ? &d->ge_bad_loss
                                                         : NULL;
    if (percent) {
        double v = strtod(val, &end);
        if (*end || !*val || !(v >= 0 && v <= 100)) return -1; /* NaN fails both */
        if (check) return 0;
        *percent = v;
        if (percent == &d->ge_p && v == 0) d->ge_bad = 0; /* off: start good next time */
        return 0;
    }
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (*end || !*val || *val == '-' || errno == ERANGE) return -1; /* "-1" would wrap */
    static const char *const keys[] = {"delay_us", "jitter_us",  "reorder", "rate_bps",
                                       "limit_pkts", "limit_bytes", "down",  "mtu"};
    int known = 0;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) known |= !strcmp(key, keys[i]);
    if (!known) return -1;
    if (check) return 0;
    if (!strcmp(key, "delay_us")) d->delay_ns = v * 1000ull;
    else if (!strcmp(key, "jitter_us")) d->jitter_ns = v * 1000ull;
    else if (!strcmp(key, "reorder")) d->reorder = v != 0;
    else if (!strcmp(key, "rate_bps")) set_rate(d, v, now);
    else if (!strcmp(key, "limit_pkts")) d->limit_pkts = v;
    else if (!strcmp(key, "limit_bytes")) d->limit_bytes = v;
    else if (!strcmp(key, "down")) {
        int was = d->down;
        d->down = v != 0;
        if (d->down && !was) flush(d);
    } else d->mtu = v;
    return 0;
}

/* Add the frames the kernel dropped on d's receive socket since the last reading (the
 * socket's counters reset when read). */
static void read_kernel_drops(struct direction *d) {
    struct tpacket_stats st;
    socklen_t len = sizeof(st);
    if (getsockopt(d->rx_fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) d->kernel_drops += st.tp_drops;
}

/* The "stats" answer for d, then a new window of lateness. */
static int window_stats(struct direction *d, char *out, size_t cap) {
    int n = snprintf(out, cap,
                     "%s late_max_us=%.1f late_mean_us=%.1f departures=%llu tx_err=%llu drop_cap=%llu "
                     "kernel_drops=%llu",
                     d->name, (double)d->late_max_ns / 1e3,
                     d->late_n ? (double)d->late_sum_ns / (double)d->late_n / 1e3 : 0.0,
                     (unsigned long long)d->late_n, (unsigned long long)d->tx_err,
                     (unsigned long long)d->drop_cap, (unsigned long long)d->kernel_drops);
    d->late_max_ns = d->late_sum_ns = d->late_n = 0;
    return n;
}

static int describe(const struct direction *d, char *out, size_t cap) {
    char seed_text[24] = "-";
    if (d->seeded) snprintf(seed_text, sizeof(seed_text), "%llu", (unsigned long long)d->seed);
    return snprintf(out, cap,
                    "%s delay_us=%llu jitter_us=%llu reorder=%d loss_pct=%g ge_p_pct=%g ge_r_pct=%g "
                    "ge_good_loss_pct=%g ge_bad_loss_pct=%g rate_bps=%llu trace=%s "
                    "limit_pkts=%llu limit_bytes=%llu down=%d mtu=%llu rx=%llu tx=%llu drop_loss=%llu "
                    "drop_queue=%llu drop_down=%llu drop_mtu=%llu drop_cap=%llu tx_err=%llu "
                    "kernel_drops=%llu queued=%zu seed=%s",
                    d->name, (unsigned long long)(d->delay_ns / 1000), (unsigned long long)(d->jitter_ns / 1000),
                    d->reorder, d->loss_pct, d->ge_p, d->ge_r, d->ge_good_loss, d->ge_bad_loss,
                    (unsigned long long)d->rate_bps, d->trace_len ? d->trace_name : "-",
                    (unsigned long long)d->limit_pkts, (unsigned long long)d->limit_bytes, d->down,
                    (unsigned long long)d->mtu, (unsigned long long)d->rx, (unsigned long long)d->tx,
                    (unsigned long long)d->drop_loss, (unsigned long long)d->drop_queue,
                    (unsigned long long)d->drop_down, (unsigned long long)d->drop_mtu,
                    (unsigned long long)d->drop_cap, (unsigned long long)d->tx_err,
                    (unsigned long long)d->kernel_drops, d->heap_len + d->ring_len, seed_text);
}

/* Act on one control line (its newline stripped) at `now`, writing the one-line answer to
 * reply. */
static void run_command(char *line, struct direction *ab, struct direction *ba, uint64_t now,
                        char *reply, size_t cap) {
    char *save = NULL, *verb = strtok_r(line, " ", &save);
    read_kernel_drops(ab);
    read_kernel_drops(ba);
    if (verb && !strcmp(verb, "get")) {
        int n = describe(ab, reply, cap);
        n += snprintf(reply + n, cap - (size_t)n, " | ");
        describe(ba, reply + n, cap - (size_t)n);
    } else if (verb && !strcmp(verb, "stats")) {
        int n = window_stats(ab, reply, cap);
        n += snprintf(reply + n, cap - (size_t)n, " | ");
        window_stats(ba, reply + n, cap - (size_t)n);
    } else if (verb && !strcmp(verb, "seed")) {
        char *text = strtok_r(NULL, " ", &save), *end = NULL;
        errno = 0;
        unsigned long long seed = text ? strtoull(text, &end, 10) : 0;
        if (!text || *text == '-' || errno || !end || *end || strtok_r(NULL, " ", &save)) {
            snprintf(reply, cap, "err seed takes one unsigned 64-bit integer");
        } else {
            seed_direction(ab, seed, 0);
            seed_direction(ba, seed, 1);
            ab->seeded = ba->seeded = 1;
            snprintf(reply, cap, "ok");
        }
    } else if (verb && !strcmp(verb, "quit")) {
        snprintf(reply, cap, "ok");
        stop_requested = 1;
    } else if (verb && !strcmp(verb, "set")) {
        char *which = strtok_r(NULL, " ", &save);
        struct direction *targets[2] = {NULL, NULL};
        if (which && !strcmp(which, "ab")) targets[0] = ab;
        else if (which && !strcmp(which, "ba")) targets[0] = ba;
        else if (which && !strcmp(which, "both")) { targets[0] = ab; targets[1] = ba; }
        snprintf(reply, cap, "ok");
        if (!targets[0]) snprintf(reply, cap, "err direction must be ab, ba or both");
        /* every key is checked before any is applied: a refused set changes nothing */
        char *keys[64], *vals[64], *kv;
        int count = 0, bad = 0;
        while (targets[0] && !bad && (kv = strtok_r(NULL, " ", &save))) {
            char *eq = strchr(kv, '=');
            bad = !eq || count == 64;
            if (!bad) {
                *eq = 0;
                keys[count] = kv;
                vals[count++] = eq + 1;
                for (int i = 0; i < 2 && targets[i]; i++)
                    bad |= apply_setting(targets[i], kv, eq + 1, now, 1) < 0;
            }
            if (bad) snprintf(reply, cap, "err bad setting %s", kv);
        }
        for (int k = 0; !bad && k < count; k++)
            for (int i = 0; i < 2 && targets[i]; i++) apply_setting(targets[i], keys[k], vals[k], now, 0);
    } else {
        snprintf(reply, cap, "err unknown command (use set, get, stats, seed or quit)");
    }
}

/* Handle one control connection: read a line, act, answer one line. */
static void serve_control(int lfd, struct direction *ab, struct direction *ba) {
    int c = accept(lfd, NULL, NULL);
    if (c < 0) return;
    struct timeval tv = {1, 0}; /* a silent client must not stall the wire */
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char line[1024];
    size_t got = 0;
    while (got < sizeof(line) - 1) {
        ssize_t n = read(c, line + got, sizeof(line) - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        if (memchr(line, '\n', got)) break;
    }
    line[got] = 0;
    char *nl = strchr(line, '\n');
    char reply[2048];
    if (nl) {
        *nl = 0;
        run_command(line, ab, ba, now_ns(), reply, sizeof(reply) - 1);
    } else { /* cut short (too long, or the client went silent): never act on part of it */
        snprintf(reply, sizeof(reply) - 1, "err no whole line (at most %zu bytes, ending in a newline)",
                 sizeof(line) - 2);
    }
    size_t rl = strlen(reply);
    reply[rl++] = '\n';
    ssize_t ignored = write(c, reply, rl);
    (void)ignored;
    close(c);
}

/* When d next has work: the delay line's first departure, or the rate queue's head leaving. */
static uint64_t next_event(const struct direction *d) {
    uint64_t t = d->heap_len ? d->heap[0]->due_ns : UINT64_MAX;
    if (d->ring_len && d->head_done_ns < t) t = d->head_done_ns;
    return t;
}

static uint64_t earliest_due(const struct direction *a, const struct direction *b) {
    uint64_t ta = next_event(a), tb = next_event(b);
    return ta < tb ? ta : tb;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: qtwire <ifname-A> <ifname-B> <control-socket-path>\n");
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL); /* the timerfd must fire on time, not up to 50 us late */
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int fa = open_packet_socket(argv[1]), fb = open_packet_socket(argv[2]);
    if (fa < 0 || fb < 0) return 1;
    struct direction ab = {.name = "ab", .rx_fd = fa, .tx_fd = fb, .limit_pkts = 1000};
    struct direction ba = {.name = "ba", .rx_fd = fb, .tx_fd = fa, .limit_pkts = 1000};
    uint64_t unseeded = now_ns() ^ ((uint64_t)getpid() << 32); /* until a "seed" command */
    seed_direction(&ab, unseeded, 0);
    seed_direction(&ba, unseeded, 1);

    /* The socket is bound under another name and renamed once it listens: the path appears
       only when a connect() to it succeeds (testbed/shaping.py waits for the path; between
       bind() and listen() a connect() is refused). */
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(argv[3]) + 4 >= sizeof(sun.sun_path)) { fprintf(stderr, "qtwire: socket path too long\n"); return 2; }
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s.new", argv[3]);
    unlink(sun.sun_path);
    unlink(argv[3]);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(lfd, 8) < 0
        || rename(sun.sun_path, argv[3]) < 0) {
        perror("qtwire: control socket");
        return 1;
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int ep = epoll_create1(0);
    int fds[4] = {fa, fb, lfd, tfd};
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    unsigned char *buf = malloc(FRAME_MAX);
    uint64_t armed = 0;
    fprintf(stderr, "qtwire: bridging %s <-> %s, control %s\n", argv[1], argv[2], argv[3]);
    while (!stop_requested) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 1000);
        if (n < 0 && errno != EINTR) { perror("qtwire: epoll_wait"); break; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == fa) receive_batch(&ab, buf);
            else if (fd == fb) receive_batch(&ba, buf);
            else if (fd == lfd) serve_control(lfd, &ab, &ba);
            else if (fd == tfd) { uint64_t x; ssize_t r = read(tfd, &x, sizeof(x)); (void)r; armed = 0; }
        }
        uint64_t now = now_ns();
        deliver_due(&ab, now);
        deliver_due(&ba, now);
        uint64_t next = earliest_due(&ab, &ba);
        if (next != UINT64_MAX && next != armed) {
            struct itimerspec its = {0};
            its.it_value.tv_sec = (time_t)(next / 1000000000ull);
            its.it_value.tv_nsec = (long)(next % 1000000000ull);
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            armed = next;
        }
    }
    char line[1024];
    describe(&ab, line, sizeof(line));
    fprintf(stderr, "qtwire: exit: %s\n", line);
    describe(&ba, line, sizeof(line));
    fprintf(stderr, "qtwire: exit: %s\n", line);
    unlink(argv[3]);
    return 0;
}
