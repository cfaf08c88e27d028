/* podserver: what every emulated pod runs. It answers on each given TCP and UDP
 * port with the pod's own "namespace/name" and a newline, so a probe sees which
 * backend a Service picked. One process per pod, one epoll loop over all of its
 * ports: a few hundred kB of memory, so hundreds of pods fit on one machine.
 *
 *   podserver IDENTITY tcp:PORT|udp:PORT...
 *
 * It prints "ready" once every port is bound (or exits 1 naming the port).
 *
 * A second line, "peer IP", says which source address the pod saw (what
 * masquerading left of the client); probes read the first line as the answer.
 *
 * TCP speaks HTTP/1.x too (an httpGet readiness probe, curl): a connection whose
 * first bytes are a request line ("GET / HTTP/1.1") gets "HTTP/1.1 200 OK" with the
 * identity as its body. Anything else, or nothing within GRACE_MS of the accept (a
 * client that waits for the server to speak first, as nc does), gets the bare
 * answer; podprobe sends a line at once, so it never waits for the grace.
 *
 * TCP: accept, answer, shut the write side, read and drop whatever the client sends
 * until it closes (closing with unread data would send an RST that could destroy the
 * answer in flight). UDP: answer every datagram. */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 256
#define GRACE_MS 50
/* PENDING: accepted, not answered yet (its first bytes decide: HTTP or bare) */
enum kind { LISTENER, DATAGRAM, PENDING, PEER };
struct slot {
    int fd;
    enum kind kind;
    long long accepted_ms;
    struct sockaddr_in peer;
    char head[16];
    size_t got;
    struct slot *next;  /* the list of PENDING slots, oldest first */
};

static struct slot *pending;
static const char *identity;
static const char *const METHODS[] = {"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ",
                                      "PATCH ", "CONNECT ", "TRACE ", NULL};

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static int open_port(int type, int port) {
    int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    if (type == SOCK_STREAM && listen(fd, 512) < 0) return -1;
    return fd;
}

/* "IDENTITY\npeer A.B.C.D\n" into out; its length. */
static size_t answer_for(char *out, size_t size, struct sockaddr_in *peer) {
    char ip[INET_ADDRSTRLEN] = "-";
    inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof ip);
    return (size_t)snprintf(out, size, "%s\npeer %s\n", identity, ip);
}

static struct slot *watch(int ep, int fd, enum kind kind) {
    struct slot *s = calloc(1, sizeof *s);
    struct epoll_event ev = {.events = EPOLLIN};
    if (!s) { perror("calloc"); exit(1); }
    s->fd = fd; s->kind = kind; ev.data.ptr = s;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(1); }
    return s;
}

static void unlist(struct slot *s) {
    struct slot **p = &pending;
    while (*p && *p != s) p = &(*p)->next;
    if (*p) *p = s->next;
}

static void drop(struct slot *s) {
    if (s->kind == PENDING) unlist(s);
    close(s->fd);  /* also removes it from the epoll set */
    free(s);
}

/* Is head (got bytes so far) an HTTP request line? 1 yes, 0 no, -1 not known yet. */
static int is_http(const char *head, size_t got) {
    int i, maybe = 0;
    for (i = 0; METHODS[i]; i++) {
        size_t m = strlen(METHODS[i]);
        if (got >= m && !strncmp(head, METHODS[i], m)) return 1;
        if (got < m && !strncmp(head, METHODS[i], got)) maybe = 1;
    }
    return maybe ? -1 : 0;
}

/* Answer a PENDING connection (HTTP or bare) and shut its write side: it drains from now. */
static void answer(struct slot *s, int http) {
    char out[1024];
    size_t len;
    if (http)
        len = (size_t)snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                               strlen(identity) + 1, identity);
    else
        len = answer_for(out, sizeof out, &s->peer);
    if (write(s->fd, out, len) < 0 || shutdown(s->fd, SHUT_WR) < 0) {
        drop(s);
        return;
    }
    unlist(s);
    s->kind = PEER;
}

int main(int argc, char **argv) {
    char reply[512], buf[2048];
    size_t len;
    int ep, i;
    struct sockaddr_in peer;
    socklen_t pl;
    if (argc < 3) { fprintf(stderr, "usage: %s IDENTITY tcp:PORT|udp:PORT...\n", argv[0]); return 2; }
    if (argc - 2 > MAX_PORTS) { fprintf(stderr, "at most %d ports\n", MAX_PORTS); return 2; }
    if (strlen(argv[1]) > 300) { fprintf(stderr, "identity too long\n"); return 2; }
    identity = argv[1];
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (i = 2; i < argc; i++) {
        int port = atoi(argv[i] + 4), udp = !strncmp(argv[i], "udp:", 4), fd;
        if ((!udp && strncmp(argv[i], "tcp:", 4)) || port < 1 || port > 65535) {
            fprintf(stderr, "bad port spec %s\n", argv[i]); return 2;
        }
        fd = open_port(udp ? SOCK_DGRAM : SOCK_STREAM, port);
        if (fd < 0) { fprintf(stderr, "%s: %s\n", argv[i], strerror(errno)); return 1; }
        watch(ep, fd, udp ? DATAGRAM : LISTENER);
    }
    puts("ready");  /* every port is bound: the starter may go on */
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[64];
        int wait = -1, n;
        while (pending && now_ms() - pending->accepted_ms >= GRACE_MS)
            answer(pending, 0);  /* a silent client: it waits for the server to speak */
        if (pending) wait = (int)(GRACE_MS - (now_ms() - pending->accepted_ms));
        n = epoll_wait(ep, evs, 64, wait);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { perror("epoll_wait"); return 1; }
        for (i = 0; i < n; i++) {
            struct slot *s = evs[i].data.ptr;
            if (s->kind == LISTENER) {
                struct slot *c, **tail = &pending;
                int fd;
                pl = sizeof peer;
                fd = accept4(s->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) continue;
                c = watch(ep, fd, PENDING);
                c->peer = peer;
                c->accepted_ms = now_ms();
                while (*tail) tail = &(*tail)->next;
                *tail = c;
            } else if (s->kind == DATAGRAM) {
                pl = sizeof peer;
                if (recvfrom(s->fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &pl) >= 0) {
                    len = answer_for(reply, sizeof reply, &peer);
                    sendto(s->fd, reply, len, 0, (struct sockaddr *)&peer, pl);
                }
            } else if (s->kind == PENDING) {
                ssize_t r = read(s->fd, s->head + s->got, sizeof s->head - s->got);
                int http;
                if (r == 0 || (r < 0 && errno != EAGAIN)) { drop(s); continue; }
                if (r < 0) continue;
                s->got += (size_t)r;
                http = is_http(s->head, s->got);
                if (http >= 0 || s->got == sizeof s->head) answer(s, http == 1);
            } else {
                ssize_t r = read(s->fd, buf, sizeof buf);
                if (r == 0 || (r < 0 && errno != EAGAIN)) drop(s);
            }
        }
    }
}
