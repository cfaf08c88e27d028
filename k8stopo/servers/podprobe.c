/* podprobe: the probe client run inside a client pod. For every target it opens
 * a fresh socket COUNT times (a new source port, so a new conntrack entry and a
 * new backend choice each time) and prints one line per attempt, target by target
 * in the order given, each target's attempts in order:
 *
 *   PROTO IP PORT RESULT CONNECT_US ANSWER PEER
 *
 * RESULT is ok, refused, timeout, unreachable, or closed (TCP connected but closed
 * or reset without a word, as a userspace proxy with no backend does: it accepts and
 * closes with our "probe" line unread, so its kernel answers with a RST; an answer
 * already read stays ok); CONNECT_US the microseconds connect() took (TCP: SYN to
 * SYN-ACK, the "first packet" latency; UDP: to the answer); ANSWER the first line the
 * server sent, PEER the source address the server says it saw (podserver's "peer"
 * line), each "-" when absent.
 *
 * A TCP probe sends "probe\n" once connected (podserver answers without waiting to
 * see whether an HTTP request comes). Targets are probed at the same time, up to PARALLEL sockets at once, each with its
 * own TIMEOUT_MS from its own connect() (a blocked target costs one timeout, not one
 * per target); attempts run in rounds, so the k-th attempts of all targets finish
 * before any (k+1)-th starts, and one target's attempts stay in order (round-robin
 * and session affinity read the same as one after another). PARALLEL 1 is the
 * serial client: one socket at a time.
 *
 * A target may name its host instead (tcp:web.shop.svc.cluster.local:80): it is
 * resolved once, through the pod's /etc/resolv.conf (cluster DNS in the path), and a
 * name that does not resolve reads "unresolved".
 *
 *   podprobe TIMEOUT_MS COUNT PARALLEL tcp:HOST:PORT|udp:HOST:PORT... */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, READING, DONE };

struct attempt {
    char proto[4], name[254], ip[16];
    int port, udp, fd;
    enum phase phase;
    long long start, took;
    const char *result;
    char answer[512];
    size_t got;
};

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static const char *why(int err) {
    switch (err) {
    case ECONNREFUSED: return "refused";
    case EHOSTUNREACH: case ENETUNREACH: case EACCES: case EPERM: return "unreachable";
    case ETIMEDOUT: return "timeout";
    case ECONNRESET: case EPIPE: return "closed";  /* only once connected */
    default: return "unreachable";
    }
}

static void finish(struct attempt *a, const char *result) {
    if (result) a->result = result;
    if (a->fd >= 0) close(a->fd);
    a->fd = -1;
    a->phase = DONE;
}

/* Open the socket and send the first packet (TCP: the SYN; UDP: the datagram). */
static void start(struct attempt *a) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(a->port)};
    a->start = now_us();
    a->phase = a->udp ? READING : CONNECTING;
    if (!a->ip[0]) { finish(a, "unresolved"); return; }
    a->result = "timeout";
    a->fd = socket(AF_INET, (a->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
    if (a->fd < 0) { finish(a, why(errno)); return; }
    inet_pton(AF_INET, a->ip, &sa.sin_addr);
    if (connect(a->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        finish(a, why(errno));
        return;
    }
    if (a->udp && send(a->fd, "probe\n", 6, 0) < 0) finish(a, why(errno));
}

/* One poll event for a: the connect's outcome, or (more of) the answer. */
static void step(struct attempt *a, short revents) {
    if (a->phase == CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { finish(a, why(err)); return; }
        if (!(revents & POLLOUT)) return;
        a->took = now_us() - a->start;
        a->phase = READING;  /* connected; ok once the answer comes */
        /* a line at once: podserver answers now instead of after its grace for silent
         * clients (a server that speaks first just reads and drops it) */
        if (send(a->fd, "probe\n", 6, MSG_NOSIGNAL) < 0 && errno != EAGAIN) finish(a, why(errno));
        return;
    }
    {
        ssize_t r = recv(a->fd, a->answer + a->got, sizeof a->answer - 1 - a->got, 0);
        if (r < 0) { if (errno != EAGAIN) finish(a, a->got ? NULL : why(errno)); return; }
        if (r == 0) { finish(a, a->got ? NULL : "closed"); return; }
        if (a->udp) a->took = now_us() - a->start;
        a->result = "ok";
        a->got += (size_t)r;
        if (a->udp || a->got >= sizeof a->answer - 1) finish(a, NULL);
    }
}

/* Run attempts [0, n) at once until each is done or past its timeout. */
static void run(struct attempt *as, int n, int timeout_ms, struct pollfd *fds, int *who) {
    int i;
    for (i = 0; i < n; i++) start(&as[i]);
    for (;;) {
        long long now = now_us(), next = -1;
        int k = 0, left;
        for (i = 0; i < n; i++) {
            long long deadline = as[i].start + timeout_ms * 1000LL;
            if (as[i].phase == DONE) continue;
            if (now >= deadline) { finish(&as[i], NULL); continue; }
            if (next < 0 || deadline < next) next = deadline;
            fds[k].fd = as[i].fd;
            fds[k].events = as[i].phase == CONNECTING ? POLLOUT : POLLIN;
            fds[k].revents = 0;
            who[k++] = i;
        }
        if (!k) return;
        left = (int)((next - now + 999) / 1000);
        if (poll(fds, (nfds_t)k, left) < 0 && errno != EINTR) { perror("poll"); exit(1); }
        for (i = 0; i < k; i++)
            if (fds[i].revents) step(&as[who[i]], fds[i].revents);
    }
}

/* name's IPv4 address into ip ("" when it does not resolve); an address is itself. */
static void resolve(const char *name, char *ip) {
    struct addrinfo hints = {.ai_family = AF_INET}, *res;
    struct in_addr a;
    ip[0] = 0;
    if (inet_pton(AF_INET, name, &a) == 1) { strcpy(ip, name); return; }
    if (getaddrinfo(name, NULL, &hints, &res)) return;
    inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, 16);
    freeaddrinfo(res);
}

static void print(struct attempt *a) {
    char *peer = "";
    char *second;
    a->answer[a->got] = 0;
    second = strchr(a->answer, '\n');
    if (second && !strncmp(second + 1, "peer ", 5)) {
        peer = second + 6;
        peer[strcspn(peer, "\r\n ")] = 0;
    }
    a->answer[strcspn(a->answer, "\r\n ")] = 0;
    if (!a->answer[0]) strcpy(a->answer, "-");
    printf("%s %s %d %s %lld %s %s\n", a->proto, a->ip[0] ? a->ip : "-", a->port, a->result, a->took, a->answer,
           peer[0] ? peer : "-");
}

int main(int argc, char **argv) {
    int timeout_ms, count, parallel, n, i, k, *who;
    struct attempt *as;
    struct pollfd *fds;
    if (argc < 5) {
        fprintf(stderr, "usage: %s TIMEOUT_MS COUNT PARALLEL proto:ip:port...\n", argv[0]);
        return 2;
    }
    timeout_ms = atoi(argv[1]);
    count = atoi(argv[2]);
    parallel = atoi(argv[3]);
    n = argc - 4;
    if (timeout_ms < 1 || count < 1 || parallel < 1) { fprintf(stderr, "bad numbers\n"); return 2; }
    as = calloc((size_t)n * (size_t)count, sizeof *as);
    fds = calloc((size_t)parallel, sizeof *fds);
    who = calloc((size_t)parallel, sizeof *who);
    if (!as || !fds || !who) { perror("calloc"); return 1; }
    for (i = 0; i < n; i++) {
        struct attempt t = {.fd = -1};
        if (sscanf(argv[i + 4], "%3[a-z]:%253[^:]:%d", t.proto, t.name, &t.port) != 3
            || (strcmp(t.proto, "tcp") && strcmp(t.proto, "udp"))) {
            fprintf(stderr, "bad target %s\n", argv[i + 4]); return 2;
        }
        t.udp = !strcmp(t.proto, "udp");
        resolve(t.name, t.ip);
        for (k = 0; k < count; k++) as[k * n + i] = t;  /* round-major */
    }
    for (k = 0; k < count; k++)
        for (i = 0; i < n; i += parallel)
            run(&as[k * n + i], n - i < parallel ? n - i : parallel, timeout_ms, fds, who);
    for (i = 0; i < n; i++)
        for (k = 0; k < count; k++) print(&as[k * n + i]);
    return 0;
}
