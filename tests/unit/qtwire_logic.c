/* The logic of testbed/wire/qtwire.c on a synthetic clock, without sockets or namespaces: the
 * file is included whole (its main renamed), frames are admitted at chosen times and the
 * departures read off its delay line. tests/unit/test_qtwire_logic.py compiles and runs this
 * and checks what it prints: one line per scenario, "name key=value ...". */
#define main qtwire_main
#include "../../testbed/wire/qtwire.c"
#undef main

#include <math.h>

#define MS 1000000ull
#define SEC 1000000000ull
#define FRAME 1514u
#define MAX_DEPARTURES 4000000

static unsigned char frame[FRAME];
static uint64_t departures[MAX_DEPARTURES];
static size_t departed;

static void init(struct direction *d) {
    memset(d, 0, sizeof(*d));
    d->name = "ba";
    d->rx_fd = d->tx_fd = -1;
    d->limit_pkts = 1000;
    seed_direction(d, 1, 0); /* main() seeds from the clock; a fixed start here */
}

/* What the program does at `now`: serve the rate queue, then send what is due. */
static void advance(struct direction *d, uint64_t now) {
    serve_queue(d, now);
    while (d->heap_len && d->heap[0]->due_ns <= now) {
        struct pkt *p = heap_pop(d);
        if (departed < MAX_DEPARTURES) departures[departed++] = p->due_ns;
        free(p);
    }
}

static void finish(struct direction *d) {
    uint64_t t;
    while ((t = next_event(d)) != UINT64_MAX) advance(d, t);
}

/* A control line, as testbed/shaping.py sends it; its answer. */
static const char *command(struct direction *d, const char *text, uint64_t now) {
    static char reply[2048];
    char line[1024];
    snprintf(line, sizeof(line), "%s", text);
    run_command(line, d, d, now, reply, sizeof(reply));
    return reply;
}

/* Every key of a profile, as LinkShaper.set sends on each change. */
static void set_all(struct direction *d, unsigned long long delay_us, unsigned long long jitter_us,
                    unsigned long long rate_bps, unsigned limit, int down, uint64_t now) {
    char line[512];
    snprintf(line, sizeof(line),
             "set ba delay_us=%llu jitter_us=%llu reorder=0 loss_pct=0 ge_p_pct=0 ge_r_pct=100 "
             "ge_good_loss_pct=0 ge_bad_loss_pct=100 rate_bps=%llu trace= limit_pkts=%u "
             "limit_bytes=0 mtu=0 down=%d",
             delay_us, jitter_us, rate_bps, limit, down);
    const char *reply = command(d, line, now);
    if (strcmp(reply, "ok")) { fprintf(stderr, "refused: %s\n", reply); exit(1); }
}

/* Mbit/s departed in [from, to). */
static double mbits(uint64_t from, uint64_t to) {
    double bits = 0;
    for (size_t i = 0; i < departed; i++)
        if (departures[i] >= from && departures[i] < to) bits += FRAME * 8.0;
    return bits / 1e6 / ((double)(to - from) / SEC);
}

/* A link offered twice its rate, its settings re-sent every 250 ms (as scenario steps and
 * blackhole() do): it carries its rate, not 13.5-14.8 at 10 Mbit/s as when each set restarted
 * the queue, nor 0.97 at 1 Mbit/s as when each restarted the frame being served. */
static double resent_at(unsigned long long rate_bps) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 5000, 0, rate_bps, 100, 0, 1);
    uint64_t gap = FRAME * 8ull * SEC / (2 * rate_bps), next_set = 250 * MS;
    for (uint64_t now = 1; now < 11 * SEC; now += gap) {
        advance(&d, now);
        if (now >= next_set) { set_all(&d, 5000, 0, rate_bps, 100, 0, now); next_set += 250 * MS; }
        admit(&d, frame, FRAME, now);
    }
    finish(&d);
    return mbits(1 * SEC, 11 * SEC);
}

static void resent_settings(void) {
    printf("resent_settings mbit_10=%.4f mbit_1=%.4f\n", resent_at(10000000), resent_at(1000000));
}

/* At 1 Mbit/s a frame at 0 and one at 20 ms, the program reading the second before its timer
 * moved the first on: the second is served from its arrival (it started at the first's
 * departure, 8 ms before it arrived). */
static void late_arrival(void) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 0, 0, 1000000, 100, 0, 0);
    admit(&d, frame, FRAME, 0);
    admit(&d, frame, FRAME, 20 * MS);
    finish(&d);
    printf("late_arrival second_ms=%.3f expected_ms=%.3f\n", (double)departures[1] / MS,
           (double)(20 * MS + FRAME * 8ull * SEC / 1000000ull) / MS);
}

/* 50 -> 10 Mbit/s at 1 s with the 1000-frame queue full: the queued frames leave at the new
 * rate from the one being served on (they kept the old one: 240 ms at 50 after the change). */
static void rate_change(void) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 0, 0, 50000000, 1000, 0, 1);
    uint64_t gap = FRAME * 8ull * SEC / 60000000ull;
    int changed = 0;
    for (uint64_t now = 1; now < 2 * SEC; now += gap) {
        advance(&d, now);
        if (!changed && now >= SEC) { set_all(&d, 0, 0, 10000000, 1000, 0, now); changed = 1; }
        admit(&d, frame, FRAME, now);
    }
    finish(&d);
    printf("rate_change mbit_before=%.3f mbit_after=%.3f\n", mbits(SEC / 2, SEC),
           mbits(SEC + 10 * MS, 2 * SEC));
}

/* wifi's profile (50 Mbit/s, 5 +- 2 ms) at 90 % load: the frames leave spaced by at least their
 * serialisation (242 us), not in bunches at ~200 Mbit/s over a millisecond. */
static void jitter_spacing(void) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 5000, 2000, 50000000, 1000, 0, 1);
    uint64_t gap = FRAME * 8ull * SEC / 45000000ull;
    for (uint64_t now = 1; now < 2 * SEC; now += gap) {
        advance(&d, now);
        admit(&d, frame, FRAME, now);
    }
    finish(&d);
    uint64_t serial = FRAME * 8ull * SEC / 50000000ull, closest = UINT64_MAX;
    size_t out_of_order = 0;
    for (size_t i = 1; i < departed; i++) {
        if (departures[i] < departures[i - 1]) out_of_order++;
        else if (departures[i] - departures[i - 1] < closest) closest = departures[i] - departures[i - 1];
    }
    printf("jitter_spacing departures=%zu closest_ns=%llu serial_ns=%llu out_of_order=%zu\n", departed,
           (unsigned long long)closest, (unsigned long long)serial, out_of_order);
}

/* Pings every 20 ms through 10 +- 8 ms on a 50 Mbit/s link: each draws its own delay (a
 * frame's own serialisation keeps it off the one before, not the whole gap since it). */
static void sparse_jitter(void) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 10000, 8000, 50000000, 1000, 0, 1);
    uint64_t gap = 20 * MS, serial = FRAME * 8ull * SEC / 50000000ull;
    size_t sent = 0;
    for (uint64_t now = 1; now < 20 * SEC; now += gap) {
        advance(&d, now);
        admit(&d, frame, FRAME, now);
        sent++;
    }
    finish(&d);
    double least = 1e18, most = 0, sum = 0;
    for (size_t i = 0; i < departed; i++) {
        double delay = (double)(departures[i] - (1 + i * gap) - serial) / MS;
        least = delay < least ? delay : least;
        most = delay > most ? delay : most;
        sum += delay;
    }
    printf("sparse_jitter frames=%zu least_ms=%.3f most_ms=%.3f mean_ms=%.3f\n", departed, least,
           most, sum / (double)departed);
}

/* 5g's profile (100 Mbit/s, 2000-frame queue, 10 ms) loaded, a 75 ms blackhole at 1 s: nothing
 * leaves from 1 s until the first frame admitted after it has crossed (the queue and the delay
 * line held 240 ms of frames that kept leaving, and the end of the blackhole let 1033 out at
 * once). */
static void blackhole(void) {
    struct direction d;
    init(&d);
    departed = 0;
    set_all(&d, 10000, 0, 100000000, 2000, 0, 1);
    uint64_t gap = FRAME * 8ull * SEC / 110000000ull;
    int state = 0;
    for (uint64_t now = 1; now < 2 * SEC; now += gap) {
        advance(&d, now);
        if (state == 0 && now >= SEC) { set_all(&d, 10000, 0, 100000000, 2000, 1, now); state = 1; }
        if (state == 1 && now >= SEC + 75 * MS) { set_all(&d, 10000, 0, 100000000, 2000, 0, now); state = 2; }
        admit(&d, frame, FRAME, now);
    }
    finish(&d);
    uint64_t first_after = UINT64_MAX;
    size_t burst = 1, longest = 1;
    for (size_t i = 0; i < departed; i++) {
        if (departures[i] > SEC && departures[i] < first_after) first_after = departures[i];
        burst = i && departures[i] == departures[i - 1] ? burst + 1 : 1;
        if (burst > longest) longest = burst;
    }
    printf("blackhole silence_ms=%.3f largest_burst=%zu drop_down=%llu\n",
           (double)(first_after - SEC) / MS, longest, (unsigned long long)d.drop_down);
}

/* A set with one bad key changes nothing (it used to apply the keys before it, and a trace
 * it could not read had already removed the old one); a trace may end its lines in CR. */
static void all_or_nothing(const char *good_trace, const char *crlf_trace) {
    struct direction d;
    init(&d);
    set_all(&d, 5000, 0, 50000000, 1000, 0, 1);
    char line[1024];
    snprintf(line, sizeof(line), "set ba trace=%s", good_trace);
    printf("all_or_nothing trace_loaded=%s", command(&d, line, 2));
    printf(" refused=\"%s\"", command(&d, "set ba rate_bps=0 delay_us=1 trace=/nonexistent", 3));
    printf(" rate_bps=%llu delay_us=%llu trace=%s", (unsigned long long)d.rate_bps,
           (unsigned long long)(d.delay_ns / 1000), d.trace_len ? d.trace_name : "-");
    snprintf(line, sizeof(line), "set ba trace=%s", crlf_trace);
    printf(" crlf=%s\n", command(&d, line, 4));
}

/* "stats": how late frames left after their due time, and a send that failed (no socket here:
 * every send does), then a new window. */
static void window(void) {
    struct direction d, other;
    init(&d);
    init(&other);
    other.name = "ab";
    set_all(&d, 1000, 0, 0, 1000, 0, 0);
    for (int i = 0; i < 3; i++) admit(&d, frame, FRAME, 0);
    deliver_due(&d, 1 * MS + 500000); /* due at 1 ms, sent 0.5 ms late */
    char reply[2048], line[64];
    snprintf(line, sizeof(line), "stats");
    run_command(line, &other, &d, 2 * MS, reply, sizeof(reply));
    const char *mine = strstr(reply, "| "); /* d's half of the answer */
    printf("window_first %s\n", mine ? mine + 2 : reply);
    snprintf(line, sizeof(line), "stats");
    run_command(line, &other, &d, 3 * MS, reply, sizeof(reply));
    mine = strstr(reply, "| ");
    printf("window_again %s\n", mine ? mine + 2 : reply);
}

/* What each send's outcome counts as: sent whole, refused because the interface is down (the
 * lab took the carrier away), or refused otherwise (the shaper's own fault). */
static void send_outcomes(void) {
    struct direction d;
    init(&d);
    count_send(&d, FRAME, FRAME, 0);
    count_send(&d, -1, FRAME, ENETDOWN);
    count_send(&d, -1, FRAME, ENETDOWN);
    count_send(&d, -1, FRAME, ENOBUFS);
    count_send(&d, 100, FRAME, 0);
    printf("send_outcomes tx=%llu drop_down=%llu tx_err=%llu\n", (unsigned long long)d.tx,
           (unsigned long long)d.drop_down, (unsigned long long)d.tx_err);
}

/* Values the Python side never sends but a raw control line could: refused, not wrapped. */
static void bad_values(const char *spaced_trace) {
    struct direction d;
    init(&d);
    char line[1024];
    printf("bad_values nan=%s", command(&d, "set ba loss_pct=nan", 1));
    printf(" negative=%s", command(&d, "set ba limit_pkts=-1", 2));
    printf(" huge=%s", command(&d, "set ba delay_us=99999999999999999999999", 3));
    snprintf(line, sizeof(line), "set ba trace=%s", spaced_trace);
    printf(" spaced=%s", command(&d, line, 4));
    printf(" opportunities=%zu\n", d.trace_len);
}

/* Admit `count` frames `step_ns` apart from `start_ns`: which of them the loss drops, as an
 * FNV-1a hash of the per-frame outcomes. */
static uint64_t drop_pattern(struct direction *d, uint64_t count, uint64_t start_ns, uint64_t step_ns) {
    uint64_t hash = 1469598103934665603ull;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t now = start_ns + i * step_ns, before = d->drop_loss;
        advance(d, now);
        admit(d, frame, FRAME, now);
        hash = (hash ^ (d->drop_loss - before)) * 1099511628211ull;
    }
    return hash;
}

/* Which of 4000 frames a lossy link drops, as a hash of the pattern (and how many): after
 * "seed n" a function of n alone, whatever the frames' spacing and the jitter drawn between
 * the loss draws. */
static uint64_t loss_pattern(const char *seed_line, const char *loss, unsigned long long jitter_us,
                             uint64_t step_ns, unsigned long long *drops) {
    struct direction d;
    init(&d);
    departed = 0;
    char line[512];
    snprintf(line, sizeof(line), "set ba delay_us=10000 jitter_us=%llu rate_bps=50000000 %s",
             jitter_us, loss);
    command(&d, line, 1);
    if (seed_line) command(&d, seed_line, 1);
    uint64_t hash = drop_pattern(&d, 4000, 2, step_ns);
    finish(&d);
    *drops = (unsigned long long)d.drop_loss;
    return hash;
}

static void seeded_loss(void) {
    const char *random = "loss_pct=30", *bursty = "ge_p_pct=5 ge_r_pct=30 ge_bad_loss_pct=80";
    unsigned long long drops, other_drops, ge_drops, ignored;
    uint64_t base = loss_pattern("seed 7", random, 0, MS, &drops);
    uint64_t retimed = loss_pattern("seed 7", random, 3000, 300000, &ignored);
    uint64_t other = loss_pattern("seed 8", random, 0, MS, &other_drops);
    uint64_t ge = loss_pattern("seed 7", bursty, 0, MS, &ge_drops);
    uint64_t ge_retimed = loss_pattern("seed 7", bursty, 3000, 300000, &ignored);
    printf("seeded_loss same=%d other_differs=%d ge_same=%d drops=%llu other_drops=%llu "
           "ge_drops=%llu\n",
           base == retimed, base != other, ge == ge_retimed, drops, other_drops, ge_drops);
    /* seeded again on the same link, whose model was left in its (sticky) bad state */
    struct direction g;
    init(&g);
    command(&g, "set ba ge_p_pct=50 ge_r_pct=1 ge_bad_loss_pct=80", 1);
    uint64_t twice[2];
    int bad_after_first = 0;
    for (int round = 0; round < 2; round++) {
        command(&g, "seed 7", 1);
        twice[round] = drop_pattern(&g, 1000, 2 + (uint64_t)round * 1000 * MS, MS);
        if (round == 0) bad_after_first = g.ge_bad;
    }
    printf("ge_reseeded bad_after_first=%d same=%d\n", bad_after_first, twice[0] == twice[1]);
    struct direction d;
    init(&d);
    printf("seed_command ok=%s", command(&d, "seed 18446744073709551615", 1));
    const char *got = command(&d, "get", 1);
    printf(" shown=%d", strstr(got, "seed=18446744073709551615") != NULL);
    printf(" negative=%s", command(&d, "seed -1", 1));
    printf(" word=%s", command(&d, "seed x", 1));
    printf(" missing=%s", command(&d, "seed", 1));
    printf(" two=%s\n", command(&d, "seed 1 2", 1));
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: qtwire_logic GOOD_TRACE CRLF_TRACE SPACED_TRACE\n");
        return 2;
    }
    resent_settings();
    late_arrival();
    rate_change();
    jitter_spacing();
    sparse_jitter();
    blackhole();
    all_or_nothing(argv[1], argv[2]);
    window();
    send_outcomes();
    bad_values(argv[3]);
    seeded_loss();
    return 0;
}
