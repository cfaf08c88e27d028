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
 * TCP: accept, write the answer, shut the write side, read and drop whatever the
 * client sends until it closes (closing with unread data would send an RST that
 * could destroy the answer in flight). UDP: answer every datagram. */
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
#include <unistd.h>

#define MAX_PORTS 256
enum kind { LISTENER, DATAGRAM, PEER };
struct slot { int fd; enum kind kind; };

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
static size_t answer_for(char *out, size_t size, const char *identity, struct sockaddr_in *peer) {
    char ip[INET_ADDRSTRLEN] = "-";
    inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof ip);
    return (size_t)snprintf(out, size, "%s\npeer %s\n", identity, ip);
}

static void watch(int ep, int fd, enum kind kind) {
    struct slot *s = malloc(sizeof *s);
    struct epoll_event ev = {.events = EPOLLIN};
    if (!s) { perror("malloc"); exit(1); }
    s->fd = fd; s->kind = kind; ev.data.ptr = s;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(1); }
}

int main(int argc, char **argv) {
    char answer[512], buf[2048];
    size_t len;
    int ep, i;
    struct sockaddr_in peer;
    socklen_t pl;
    if (argc < 3) { fprintf(stderr, "usage: %s IDENTITY tcp:PORT|udp:PORT...\n", argv[0]); return 2; }
    if (argc - 2 > MAX_PORTS) { fprintf(stderr, "at most %d ports\n", MAX_PORTS); return 2; }
    if (strlen(argv[1]) > 300) { fprintf(stderr, "identity too long\n"); return 2; }
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
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { perror("epoll_wait"); return 1; }
        for (i = 0; i < n; i++) {
            struct slot *s = evs[i].data.ptr;
            if (s->kind == LISTENER) {
                int c;
                pl = sizeof peer;
                c = accept4(s->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0) continue;
                len = answer_for(answer, sizeof answer, argv[1], &peer);
                if (write(c, answer, len) < 0 || shutdown(c, SHUT_WR) < 0) { close(c); continue; }
                watch(ep, c, PEER);
            } else if (s->kind == DATAGRAM) {
                pl = sizeof peer;
                if (recvfrom(s->fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &pl) >= 0) {
                    len = answer_for(answer, sizeof answer, argv[1], &peer);
                    sendto(s->fd, answer, len, 0, (struct sockaddr *)&peer, pl);
                }
            } else {
                ssize_t r = read(s->fd, buf, sizeof buf);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    close(s->fd);  /* also removes it from the epoll set */
                    free(s);
                }
            }
        }
    }
}
