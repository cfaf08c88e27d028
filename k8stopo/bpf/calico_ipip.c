// SPDX-License-Identifier: GPL-2.0
/*
 * Calico IP-in-IP for a kernel without the ipip module (k8stopo, calico-ipip).
 *
 * What the kernel's ipip tunl0 (remote any, local any, ttl inherit, pmtudisc) does, in
 * two tc direct-action programs:
 *
 *   tunl0 egress   A packet routed "<peer block> via <peer node> dev tunl0 onlink" (BIRD's
 *                  route, as Calico's krt_tunnel made it) gets a 20-byte outer IPv4 header,
 *                  protocol 4, from this node to that next hop, and leaves through the
 *                  underlay NIC. The next hop is read from the route (FIB lookup on tunl0),
 *                  the outer source and NIC from the route to the next hop, as
 *                  ip_tunnel_xmit does; bpf_skb_adjust_room with ENCAP_L3_IPV4 types GSO
 *                  super-packets as IPXIP4 so that they are segmented as ipip's are.
 *   NIC ingress    Protocol 4 from a Calico host (Felix's cali40all-hosts-net check) loses
 *                  its outer header and goes up the stack; from any other host it is
 *                  dropped ("DROP IPIP packets from non-Calico hosts").
 *
 * calico_hosts.h (generated per run) defines is_calico_host(__u32 addr_in_host_order).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "calico_hosts.h"

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#define AF_INET 2
#define IP_DF 0x4000

static __always_inline __u16 ip_checksum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("tc/egress")
int tunl0_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *inner = (void *)(eth + 1);
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	struct iphdr outer = {};
	__u32 next_hop;

	if ((void *)(inner + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT; /* tunl0 carries IPv4 only */
	outer.ttl = inner->ttl; /* ttl inherit (ipip's default ttl 0) */

	/* The route that sent the packet here: its gateway is the peer node. */
	fib.family = AF_INET;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = inner->saddr;
	fib.ipv4_dst = inner->daddr;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH)
	    != BPF_FIB_LKUP_RET_SUCCESS || fib.ipv4_dst == inner->daddr)
		return TC_ACT_SHOT; /* no route, or no next hop to tunnel to */
	next_hop = fib.ipv4_dst;

	/* The route to the peer node: the underlay NIC and this node's source address. */
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.ipv4_dst = next_hop;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib),
			   BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC)
	    != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_SHOT;

	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return TC_ACT_SHOT;
	outer.version = 4;
	outer.ihl = 5;
	outer.tot_len = bpf_htons(skb->len - ETH_HLEN);
	outer.frag_off = bpf_htons(IP_DF); /* pmtudisc */
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = fib.ipv4_src;
	outer.daddr = next_hop;
	outer.check = ip_checksum(&outer);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
		return TC_ACT_SHOT;

	nh.nh_family = AF_INET;
	nh.ipv4_nh = next_hop;
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

SEC("tc/ingress")
int nic_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);

	if ((void *)(outer + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)
	    || outer->protocol != IPPROTO_IPIP || skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	if (!is_calico_host(bpf_ntohl(outer->saddr)))
		return TC_ACT_SHOT;
	if (outer->ihl != 5 || (outer->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK; /* options or fragments: left to the stack (which drops them) */
	if (bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
