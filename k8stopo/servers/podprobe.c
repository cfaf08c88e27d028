/* podprobe: the probe client run inside a client pod. For every target it opens
 * a fresh socket COUNT times (a new source port, so a new conntrack entry and a
 * new backend choice each time) and prints one line per attempt:
 *
 *   PROTO IP PORT RESULT CONNECT_US ANSWER PEER
 *
 * RESULT is ok, refused, timeout, unreachable, or closed (TCP connected but closed
 * without a word, as a userspace proxy with no backend does); CONNECT_US the microseconds
 * connect() took (TCP: SYN to SYN-ACK, the "first packet" latency; UDP: to the
 * answer); ANSWER the first line the server sent, PEER the source address the
 * server says it saw (podserver's "peer" line), each "-" when absent.
 *
 *   podprobe TIMEOUT_MS COUNT tcp:IP:PORT|udp:IP:PORT... */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
    default: return "unreachable";
    }
}

/* Wait for events on fd until the deadline; 0 on timeout. */
static int wait_for(int fd, short events, long long deadline) {
    struct pollfd p = {.fd = fd, .events = events};
    long long left = deadline - now_us();
    if (left <= 0) return 0;
    return poll(&p, 1, (int)((left + 999) / 1000)) > 0;
}

static void probe(const char *proto, const char *ip, int port, int timeout_ms) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int udp = !strcmp(proto, "udp");
    int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK, 0);
    long long start = now_us(), deadline = start + timeout_ms * 1000LL, took = 0;
    const char *result = "timeout";
    char answer[512] = "-";
    char *peer = "";
    size_t got = 0;
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        result = why(errno);
        goto done;
    }
    if (udp) {
        if (send(fd, "probe\n", 6, 0) < 0) { result = why(errno); goto done; }
    } else {
        int err = 0;
        socklen_t el = sizeof err;
        if (!wait_for(fd, POLLOUT, deadline)) goto done;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { result = why(err); goto done; }
        took = now_us() - start;
        result = "timeout";  /* connected; ok once the answer comes */
    }
    while (got < sizeof answer - 1 && wait_for(fd, POLLIN, deadline)) {
        ssize_t r = recv(fd, answer + got, sizeof answer - 1 - got, 0);
        if (r < 0) { result = why(errno); break; }
        if (r == 0) { if (!got) result = "closed"; break; }
        if (udp) took = now_us() - start;
        result = "ok";
        got += (size_t)r;
        if (udp) break;
    }
    answer[got] = 0;
    {
        char *second = strchr(answer, '\n');
        if (second && !strncmp(second + 1, "peer ", 5)) {
            peer = second + 6;
            peer[strcspn(peer, "\r\n ")] = 0;
        }
    }
    answer[strcspn(answer, "\r\n ")] = 0;
    if (!answer[0]) strcpy(answer, "-");
done:
    close(fd);
    printf("%s %s %d %s %lld %s %s\n", proto, ip, port, result, took, answer, peer[0] ? peer : "-");
    fflush(stdout);
}

int main(int argc, char **argv) {
    int timeout_ms, count, i, k;
    if (argc < 4) { fprintf(stderr, "usage: %s TIMEOUT_MS COUNT proto:ip:port...\n", argv[0]); return 2; }
    timeout_ms = atoi(argv[1]);
    count = atoi(argv[2]);
    for (i = 3; i < argc; i++) {
        char proto[4], ip[16];
        int port;
        if (sscanf(argv[i], "%3[a-z]:%15[0-9.]:%d", proto, ip, &port) != 3
            || (strcmp(proto, "tcp") && strcmp(proto, "udp"))) {
            fprintf(stderr, "bad target %s\n", argv[i]); return 2;
        }
        for (k = 0; k < count; k++) probe(proto, ip, port, timeout_ms);
    }
    return 0;
}
