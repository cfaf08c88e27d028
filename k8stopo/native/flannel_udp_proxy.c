/*
 * flannel-udp-proxy: the per-node forwarder of flannel's "udp" backend.
 *
 * Same shape as flanneld's C proxy (flannel pkg/backend/udp/proxy_amd64.c):
 * one thread, poll() on the flannel0 TUN (IFF_TUN | IFF_NO_PI, non-blocking)
 * and on a UDP socket bound to <node IP>:8285 (blocking, as Go's conn.File()
 * leaves it, received with MSG_DONTWAIT), then a loop that moves ONE IP packet
 * per syscall each way while either side has data:
 *   read(tun) -> longest-prefix lookup of the destination (linear, move to
 *   front) -> TTL-1 with an incremental checksum -> sendto(peer:8285);
 *   recv(udp) -> TTL-1 -> write(tun).
 * A destination with no route gets an ICMP net-unreachable written back into
 * the TUN. The buffer is the TUN MTU. The peer table (flanneld learns it from
 * the subnet leases) is given on the command line, one --route per peer.
 *
 * Once the TUN exists and the socket is bound it prints "ready <ifname>" on
 * stdout, so the caller can address the TUN and add the routes as flanneld does.
 *
 * usage: flannel-udp-proxy --tun NAME --bind IP:PORT --mtu N --tun-ip IP
 *                          [--route CIDR=IP:PORT]... [--log]
 */
#define _GNU_SOURCE
#define PROGRAM "flannel-udp-proxy"
#define SYNOPSIS "--tun NAME --bind IP:PORT --mtu N --tun-ip IP [--route CIDR=IP:PORT]... [--log]"
#include "forwarder.h"

#include <fcntl.h>
#include <linux/icmp.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/ip.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ROUTES 1024
#define MAX_IPOPTLEN 40

struct route {
	uint32_t net, mask;          /* network byte order */
	struct sockaddr_in next_hop;
};

static struct route routes[MAX_ROUTES];
static size_t nroutes;
static uint32_t tun_addr;

static int parse_route(const char *s)
{
	char net[64];
	const char *eq = strchr(s, '='), *slash = strchr(s, '/');
	int len;
	struct route *r = &routes[nroutes];
	if (nroutes == MAX_ROUTES || !eq || !slash || slash > eq || (size_t)(slash - s) >= sizeof(net))
		return -1;
	memcpy(net, s, slash - s);
	net[slash - s] = '\0';
	len = atoi(slash + 1);
	if (len < 0 || len > 32 || inet_pton(AF_INET, net, &r->net) != 1)
		return -1;
	r->mask = len ? htonl(~(uint32_t)0 << (32 - len)) : 0;
	r->net &= r->mask;
	if (parse_hostport(eq + 1, &r->next_hop))
		return -1;
	nroutes++;
	return 0;
}

/* Routes are few (one per peer); a linear scan with move-to-front, as flanneld does. */
static struct sockaddr_in *find_route(uint32_t dst)
{
	for (size_t i = 0; i < nroutes; i++) {
		if ((dst & routes[i].mask) == routes[i].net) {
			if (i) {
				struct route tmp = routes[i];
				routes[i] = routes[0];
				routes[0] = tmp;
			}
			return &routes[0].next_hop;
		}
	}
	return NULL;
}

static uint16_t cksum(const void *data, size_t len)
{
	const uint16_t *p = data;
	uint32_t sum = 0;
	for (; len > 1; len -= 2)
		sum += *p++;
	if (len)
		sum += *(const uint8_t *)p;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* TTL-1 and patch the header checksum in place (RFC 1624); 0 when the packet dies. */
static int decrement_ttl(struct iphdr *iph)
{
	if (--iph->ttl == 0) {
		logf_("discarding packet with zero TTL\n");
		return 0;
	}
	if (iph->check >= htons(0xFFFFu - 0x100))
		iph->check += htons(0x100) + 1;
	else
		iph->check += htons(0x100);
	return 1;
}

static void send_net_unreachable(int tun, const char *offender)
{
	const struct iphdr *off = (const struct iphdr *)offender;
	size_t off_len = off->ihl * 4u, len;
	struct {
		struct iphdr iph;
		struct icmphdr icmph;
		char data[sizeof(struct iphdr) + MAX_IPOPTLEN + 8];
	} __attribute__((aligned(4))) pkt;

	if (off_len < sizeof(struct iphdr) || off_len >= sizeof(struct iphdr) + MAX_IPOPTLEN)
		return;
	if (off->protocol == IPPROTO_ICMP || (off->frag_off & htons(0x1FFF)))
		return; /* no ICMP about ICMP, only for first fragments (RFC 792) */
	len = sizeof(struct iphdr) + sizeof(struct icmphdr) + off_len + 8;
	memset(&pkt, 0, sizeof(pkt));
	pkt.iph.ihl = 5;
	pkt.iph.version = 4;
	pkt.iph.tot_len = htons((uint16_t)len);
	pkt.iph.ttl = 8;
	pkt.iph.protocol = IPPROTO_ICMP;
	pkt.iph.saddr = tun_addr;
	pkt.iph.daddr = off->saddr;
	pkt.iph.check = cksum(&pkt.iph, sizeof(struct iphdr));
	pkt.icmph.type = ICMP_DEST_UNREACH;
	pkt.icmph.code = ICMP_NET_UNREACH;
	memcpy(pkt.data, offender, off_len + 8);
	pkt.icmph.checksum = cksum(&pkt.icmph, sizeof(struct icmphdr) + off_len + 8);
	if (write(tun, &pkt, len) != (ssize_t)len)
		logf_("failed to write ICMP net unreachable: %s\n", strerror(errno));
}

/* One packet TUN -> UDP; 1 when something was read (the loop goes on), 0 otherwise. */
static int tun_to_udp(int tun, int sock, char *buf, size_t buflen)
{
	ssize_t n = read(tun, buf, buflen);
	struct iphdr *iph = (struct iphdr *)buf;
	struct sockaddr_in *next_hop;

	if (n < (ssize_t)sizeof(struct iphdr)) {
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			logf_("TUN read failed: %s\n", strerror(errno));
		return 0;
	}
	next_hop = find_route(iph->daddr);
	if (!next_hop) {
		send_net_unreachable(tun, buf);
		return 1;
	}
	if (!decrement_ttl(iph))
		return 1;
	if (sendto(sock, buf, (size_t)n, 0, (struct sockaddr *)next_hop, sizeof(*next_hop)) != n)
		logf_("UDP send failed: %s\n", strerror(errno));
	return 1;
}

/* One packet UDP -> TUN. */
static int udp_to_tun(int sock, int tun, char *buf, size_t buflen)
{
	ssize_t n = recv(sock, buf, buflen, MSG_DONTWAIT);
	if (n < (ssize_t)sizeof(struct iphdr)) {
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			logf_("UDP recv failed: %s\n", strerror(errno));
		return 0;
	}
	if (!decrement_ttl((struct iphdr *)buf))
		return 1;
	while (write(tun, buf, (size_t)n) < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			logf_("TUN write failed: %s\n", strerror(errno));
			break;
		}
	}
	return 1;
}

static int open_tun(const char *name)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open /dev/net/tun");
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die("TUNSETIFF");
	return fd;
}

int main(int argc, char **argv)
{
	const char *tun_name = NULL;
	struct sockaddr_in bind_addr;
	int have_bind = 0, tun, sock, one = 1;
	size_t mtu = 0;
	char *buf;

	const char *a, *v;
	int i = 0;
	while ((a = next_option(argc, argv, &i, &v))) {
		if (!strcmp(a, "--tun"))
			tun_name = v;
		else if (!strcmp(a, "--bind")) {
			if (parse_hostport(v, &bind_addr))
				usage("bad --bind");
			have_bind = 1;
		} else if (!strcmp(a, "--mtu"))
			mtu = (size_t)atoi(v);
		else if (!strcmp(a, "--tun-ip")) {
			if (inet_pton(AF_INET, v, &tun_addr) != 1)
				usage("bad --tun-ip");
		} else if (!strcmp(a, "--route")) {
			if (parse_route(v))
				usage("bad --route (CIDR=IP:PORT)");
		} else
			usage("unknown option");
	}
	if (!tun_name || !have_bind || mtu < sizeof(struct iphdr) || mtu > 65535)
		usage("--tun, --bind and --mtu are required");

	tun = open_tun(tun_name);
	fcntl(tun, F_SETFL, O_NONBLOCK);
	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		die("socket");
	setsockopt(sock, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one)); /* as Go's net.ListenUDP */
	if (bind(sock, (struct sockaddr *)&bind_addr, sizeof(bind_addr)) < 0)
		die("bind");
	buf = malloc(mtu);
	if (!buf)
		die("malloc");
	printf("ready %s\n", tun_name);
	fflush(stdout);

	struct pollfd fds[2] = {{.fd = tun, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if ((fds[0].revents | fds[1].revents) & POLLIN) {
			int active;
			/* While either side is readable, skip poll(): an occasional EAGAIN
			 * is cheaper than a poll() per packet (flanneld's loop). */
			do {
				active = tun_to_udp(tun, sock, buf, mtu);
				active += udp_to_tun(sock, tun, buf, mtu);
			} while (active);
		}
	}
}
