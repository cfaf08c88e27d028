/*
 * weave-sleeve: a node's weave router in sleeve mode (weave router/sleeve.go, pcap.go),
 * reduced to its datapath: Ethernet frames captured from the weave bridge travel to the
 * other nodes in UDP 6783 in weave's sleeve framing, and frames from them are injected.
 *
 * Capture/inject: AF_PACKET on vethwe-pcap (whose veth peer vethwe-bridge is a port of
 * the weave bridge), promiscuous, inbound only, as weave's pcap handle is.
 * Wire (NonEncryptor): every UDP payload starts with the sending peer's 6-byte name,
 * then one or more frames, each [6-byte src peer][6-byte dst peer][2-byte big-endian
 * length][Ethernet frame]. Frames for the same peer that are already queued are
 * aggregated into one datagram up to the payload limit (aggregateAndSend, at most 100).
 * Forwarding: a MAC cache learned from what peers send (src MAC -> src peer) and from
 * what is captured (src MAC -> here). Unicast to a known remote MAC goes to its peer
 * (dst = that peer); broadcast, multicast and unknown unicast go to every peer
 * (dst = the receiving peer, as relayBroadcast sets conn.Remote()). A frame received
 * from a peer is only ever injected locally: in a full mesh weave relays nothing, so no
 * frame loops or is duplicated.
 * Not reproduced: the TCP control connections, heartbeats, PMTU discovery and ICMP
 * frag-needed generation, encryption.
 *
 * One thread, poll() on both sockets, one frame per recv. After setup it prints
 * "ready <ifname>" on stdout.
 *
 * usage: weave-sleeve --capture IFNAME --bind IP:PORT --name PEERNAME --mtu N
 *                     [--pmtu UNDERLAY_MTU] [--peer PEERNAME=IP:PORT]... [--log]
 */
#define _GNU_SOURCE
#define PROGRAM "weave-sleeve"
#define SYNOPSIS "--capture IFNAME --bind IP:PORT --name PEERNAME --mtu N [--pmtu N] " \
	"[--peer PEERNAME=IP:PORT]... [--log]"
#include "forwarder.h"

#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAME_SIZE 6
#define FRAME_HDR (NAME_SIZE + NAME_SIZE + 2)
#define MAX_PEERS 256
#define MAC_SLOTS 8192 /* power of two */
#define MAX_AGGREGATE 100
#define UDP_OVERHEAD 28
#define HERE (-1)

struct peer {
	uint8_t name[NAME_SIZE];
	struct sockaddr_in addr;
};

struct mac_entry {
	uint8_t mac[ETH_ALEN];
	int used;
	int peer; /* index into peers, or HERE */
};

static struct peer peers[MAX_PEERS];
static int npeers;
static uint8_t self_name[NAME_SIZE];
static struct mac_entry macs[MAC_SLOTS];
static int cap_fd, udp_fd, cap_ifindex;
static size_t max_payload; /* underlay PMTU - UDP overhead */

/* the datagram being aggregated for one peer */
static uint8_t out[65536];
static size_t out_len;
static int out_peer = -2;
static int out_frames;

static int parse_name(const char *s, uint8_t *name)
{
	unsigned b[NAME_SIZE];
	if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < NAME_SIZE; i++)
		name[i] = (uint8_t)b[i];
	return 0;
}

static int parse_peer(const char *s)
{
	const char *eq = strchr(s, '=');
	if (npeers == MAX_PEERS || !eq || parse_name(s, peers[npeers].name) ||
	    parse_hostport(eq + 1, &peers[npeers].addr))
		return -1;
	npeers++;
	return 0;
}

static struct mac_entry *mac_slot(const uint8_t *mac)
{
	uint32_t h = 2166136261u;
	for (int i = 0; i < ETH_ALEN; i++)
		h = (h ^ mac[i]) * 16777619u;
	for (uint32_t i = 0; i < MAC_SLOTS; i++) {
		struct mac_entry *e = &macs[(h + i) & (MAC_SLOTS - 1)];
		if (!e->used || !memcmp(e->mac, mac, ETH_ALEN))
			return e;
	}
	return NULL; /* full: forget nothing, learn nothing more */
}

static void learn(const uint8_t *mac, int peer)
{
	struct mac_entry *e;
	if (mac[0] & 1)
		return; /* never learn a group address */
	e = mac_slot(mac);
	if (!e)
		return;
	if (e->used && e->peer != peer)
		logf_("MAC %02x:%02x:%02x:%02x:%02x:%02x moved\n", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	memcpy(e->mac, mac, ETH_ALEN);
	e->used = 1;
	e->peer = peer;
}

static int find_peer_by_name(const uint8_t *name)
{
	for (int i = 0; i < npeers; i++)
		if (!memcmp(peers[i].name, name, NAME_SIZE))
			return i;
	return -1;
}

static void flush(void)
{
	if (out_peer >= 0 && out_frames) {
		struct peer *p = &peers[out_peer];
		if (sendto(udp_fd, out, out_len, 0, (struct sockaddr *)&p->addr, sizeof(p->addr)) < 0)
			logf_("UDP send failed: %s\n", strerror(errno));
	}
	out_peer = -2;
	out_frames = 0;
	out_len = 0;
}

/* Append a frame for peer i to the pending datagram (flushing first when it cannot join). */
static void queue_frame(int i, const uint8_t *frame, size_t len)
{
	if (NAME_SIZE + FRAME_HDR + len > max_payload) {
		logf_("dropping too big frame: %zu bytes\n", len);
		return;
	}
	if (out_peer != i || out_frames >= MAX_AGGREGATE || out_len + FRAME_HDR + len > max_payload)
		flush();
	if (!out_frames) {
		memcpy(out, self_name, NAME_SIZE);
		out_len = NAME_SIZE;
		out_peer = i;
	}
	memcpy(out + out_len, self_name, NAME_SIZE);
	memcpy(out + out_len + NAME_SIZE, peers[i].name, NAME_SIZE);
	out[out_len + 2 * NAME_SIZE] = (uint8_t)(len >> 8);
	out[out_len + 2 * NAME_SIZE + 1] = (uint8_t)len;
	memcpy(out + out_len + FRAME_HDR, frame, len);
	out_len += FRAME_HDR + len;
	out_frames++;
}

/* One captured frame; 1 when something was read. */
static int capture_one(uint8_t *buf, size_t buflen)
{
	ssize_t n = recv(cap_fd, buf, buflen, MSG_DONTWAIT | MSG_TRUNC);
	struct mac_entry *dst;

	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			logf_("capture recv failed: %s\n", strerror(errno));
		return 0;
	}
	if (n < ETH_HLEN)
		return 1;
	if ((size_t)n > buflen) {
		logf_("dropping captured frame of %zd bytes (buffer %zu)\n", n, buflen);
		return 1;
	}
	learn(buf + ETH_ALEN, HERE);
	dst = (buf[0] & 1) ? NULL : mac_slot(buf);
	if (dst && dst->used) {
		if (dst->peer != HERE)
			queue_frame(dst->peer, buf, (size_t)n);
		return 1;
	}
	for (int i = 0; i < npeers; i++) /* broadcast: one copy per peer, dst = that peer */
		queue_frame(i, buf, (size_t)n);
	return 1;
}

static void inject(const uint8_t *frame, size_t len)
{
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = cap_ifindex,
				  .sll_halen = ETH_ALEN};
	memcpy(sll.sll_addr, frame, ETH_ALEN);
	while (sendto(cap_fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		if (errno != EAGAIN && errno != ENOBUFS) {
			logf_("inject failed: %s\n", strerror(errno));
			break;
		}
	}
}

/* One datagram from a peer; 1 when something was read. */
static int receive_one(uint8_t *buf, size_t buflen)
{
	ssize_t n = recv(udp_fd, buf, buflen, MSG_DONTWAIT);
	size_t off = NAME_SIZE;
	int sender;

	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			logf_("UDP recv failed: %s\n", strerror(errno));
		return 0;
	}
	if (n < NAME_SIZE || (sender = find_peer_by_name(buf)) < 0)
		return 1; /* too short, or not from a peer we know */
	while (off + FRAME_HDR <= (size_t)n) {
		const uint8_t *src = buf + off, *dst = buf + off + NAME_SIZE;
		size_t len = (size_t)buf[off + 2 * NAME_SIZE] << 8 | buf[off + 2 * NAME_SIZE + 1];
		const uint8_t *frame = buf + off + FRAME_HDR;
		int src_peer = find_peer_by_name(src);
		off += FRAME_HDR + len;
		if (off > (size_t)n || len < ETH_HLEN)
			break; /* truncated */
		if (src_peer < 0 || memcmp(dst, self_name, NAME_SIZE))
			continue; /* not for us: a full mesh never relays */
		learn(frame + ETH_ALEN, src_peer);
		inject(frame, len);
	}
	return 1;
}

int main(int argc, char **argv)
{
	const char *ifname = NULL;
	struct sockaddr_in bind_addr;
	int have_bind = 0, have_name = 0, mtu = 0, pmtu = 1500, one = 1;
	size_t cap_len;
	uint8_t *cap_buf, *udp_buf;

	const char *a, *v;
	int i = 0;
	while ((a = next_option(argc, argv, &i, &v))) {
		if (!strcmp(a, "--capture"))
			ifname = v;
		else if (!strcmp(a, "--bind")) {
			if (parse_hostport(v, &bind_addr))
				usage("bad --bind");
			have_bind = 1;
		} else if (!strcmp(a, "--name")) {
			if (parse_name(v, self_name))
				usage("bad --name (6 bytes as aa:bb:cc:dd:ee:ff)");
			have_name = 1;
		} else if (!strcmp(a, "--mtu"))
			mtu = atoi(v);
		else if (!strcmp(a, "--pmtu"))
			pmtu = atoi(v);
		else if (!strcmp(a, "--peer")) {
			if (parse_peer(v))
				usage("bad --peer (PEERNAME=IP:PORT)");
		} else
			usage("unknown option");
	}
	if (!ifname || !have_bind || !have_name || mtu < 68 || mtu > 65535 ||
	    pmtu <= UDP_OVERHEAD + NAME_SIZE + FRAME_HDR + ETH_HLEN || pmtu > 65535)
		usage("--capture, --bind, --name and --mtu are required (and a sane --pmtu)");

	cap_ifindex = (int)if_nametoindex(ifname);
	if (!cap_ifindex)
		die(ifname);
	cap_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (cap_fd < 0)
		die("AF_PACKET socket");
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				  .sll_ifindex = cap_ifindex};
	if (bind(cap_fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		die("bind capture");
	struct packet_mreq mr = {.mr_ifindex = cap_ifindex, .mr_type = PACKET_MR_PROMISC};
	if (setsockopt(cap_fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) < 0)
		die("promiscuous");
	/* capture direction "in": what we inject must not come back to us */
	if (setsockopt(cap_fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0)
		die("PACKET_IGNORE_OUTGOING");

	udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (udp_fd < 0)
		die("UDP socket");
	if (bind(udp_fd, (struct sockaddr *)&bind_addr, sizeof(bind_addr)) < 0)
		die("bind UDP");
	max_payload = (size_t)pmtu - UDP_OVERHEAD; /* as weave's after PMTU verification */

	cap_len = (size_t)mtu + ETH_HLEN;
	cap_buf = malloc(cap_len);
	udp_buf = malloc(65536);
	if (!cap_buf || !udp_buf)
		die("malloc");
	printf("ready %s\n", ifname);
	fflush(stdout);

	struct pollfd fds[2] = {{.fd = cap_fd, .events = POLLIN}, {.fd = udp_fd, .events = POLLIN}};
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		int active;
		do {
			active = capture_one(cap_buf, cap_len);
			if (!active)
				flush(); /* nothing more queued behind it: send what was aggregated */
			active += receive_one(udp_buf, 65536);
		} while (active);
		flush();
	}
}
