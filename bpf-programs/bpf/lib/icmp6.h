/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * ICMPv6 answered on behalf of the routers fe80::<n>: neighbour advertisements for solicitations
 * of a router (RFC 4861) and echo replies, both generated in place.
 */
#ifndef CRS_ICMP6_H
#define CRS_ICMP6_H

#include "common.h"
#include "csum.h"
#include "eth.h"
#include "ipv6.h"

#define ND_NEIGHBOUR_SOLICIT 135
#define ND_NEIGHBOUR_ADVERT  136

#define ND_OPT_SOURCE_LL_ADDR 1
#define ND_OPT_TARGET_LL_ADDR 2

#define ND_NA_FLAG_ROUTER    0x80000000
#define ND_NA_FLAG_SOLICITED 0x40000000
#define ND_NA_FLAG_OVERRIDE  0x20000000

#define ICMP6_REPLY_HOP_LIMIT 64

/* A neighbour solicitation or advertisement carrying one link-layer address option. */
struct nd_msg {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 flags; /* reserved (zero) in a solicitation */
	struct in6_addr target;
	__u8 opt_type;
	__u8 opt_len; /* in units of 8 bytes */
	__u8 opt_mac[ETH_ALEN];
};

/* A solicitation may come without the link-layer address option. */
#define ND_NS_MIN_LEN (sizeof(struct nd_msg) - 8)

/* The advertisement we send: Ethernet + IPv6 + nd_msg. */
#define ND_NA_FRAME_LEN (ETH_HLEN + sizeof(struct ipv6hdr) + sizeof(struct nd_msg))

static __always_inline __u32 csum_add_words(__u32 acc, const __u16 *words, const int count)
{
#pragma unroll
	for (int i = 0; i < count; i++)
		acc += words[i];
	return acc;
}

/* ICMPv6 checksum of the advertisement, including the IPv6 pseudo-header (RFC 8200 8.1). */
static __always_inline __sum16 nd_na_checksum(const struct ipv6hdr *ip6, const struct nd_msg *na)
{
	__u32 acc = bpf_htons(sizeof(*na)) + bpf_htons(IPPROTO_ICMPV6);

	acc = csum_add_words(acc, (const __u16 *)&ip6->saddr, sizeof(ip6->saddr) / 2);
	acc = csum_add_words(acc, (const __u16 *)&ip6->daddr, sizeof(ip6->daddr) / 2);
	acc = csum_add_words(acc, (const __u16 *)na, sizeof(*na) / 2);
	return csum_fold(acc);
}

/*
 * Turns a neighbour solicitation for a router into that router's advertisement: router, solicited
 * and override flags, target link-layer option with `router_mac`. It goes to the solicitation's
 * source, or to all nodes (without the solicited flag, RFC 4861 7.2.4) when that source is the
 * unspecified address. The solicitation may or may not carry a source link-layer option.
 */
static __always_inline enum reply_result icmp6_ndisc_advertise(struct __sk_buff *ctx,
							       const __u8 *router_mac)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct nd_msg *nd = data + ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 requester_mac[ETH_ALEN];
	struct in6_addr requester, router;
	__u32 flags = ND_NA_FLAG_ROUTER | ND_NA_FLAG_SOLICITED | ND_NA_FLAG_OVERRIDE;
	bool to_all_nodes;

	if ((void *)nd + ND_NS_MIN_LEN > data_end)
		return REPLY_NONE;
	if (nd->code != 0 || ip6->hop_limit != IPV6_HOP_LIMIT_ND ||
	    bpf_ntohs(ip6->payload_len) < ND_NS_MIN_LEN || !ipv6_is_router(&nd->target))
		return REPLY_NONE;

	__builtin_memcpy(requester_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(&requester, &ip6->saddr, sizeof(requester));
	__builtin_memcpy(&router, &nd->target, sizeof(router));
	to_all_nodes = ipv6_is_unspecified(&requester);
	if (to_all_nodes)
		flags &= ~ND_NA_FLAG_SOLICITED;

	if (ctx->len != ND_NA_FRAME_LEN && bpf_skb_change_tail(ctx, ND_NA_FRAME_LEN, 0) < 0)
		return REPLY_NONE;

	/* Resizing invalidated every packet pointer. */
	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	eth = data;
	ip6 = data + ETH_HLEN;
	nd = data + ETH_HLEN + sizeof(struct ipv6hdr);
	if ((void *)(nd + 1) > data_end)
		return REPLY_FAILED;

	__builtin_memcpy(eth->h_source, router_mac, ETH_ALEN);
	if (to_all_nodes) {
		eth->h_dest[0] = 0x33;
		eth->h_dest[1] = 0x33;
		eth->h_dest[2] = 0;
		eth->h_dest[3] = 0;
		eth->h_dest[4] = 0;
		eth->h_dest[5] = 1;
		ipv6_set_all_nodes(&ip6->daddr);
	} else {
		__builtin_memcpy(eth->h_dest, requester_mac, ETH_ALEN);
		__builtin_memcpy(&ip6->daddr, &requester, sizeof(requester));
	}

	*(__be32 *)ip6 = bpf_htonl(0x60000000); /* version 6, no traffic class, no flow label */
	ip6->payload_len = bpf_htons(sizeof(struct nd_msg));
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = IPV6_HOP_LIMIT_ND;
	__builtin_memcpy(&ip6->saddr, &router, sizeof(router));

	nd->type = ND_NEIGHBOUR_ADVERT;
	nd->code = 0;
	nd->checksum = 0;
	nd->flags = bpf_htonl(flags);
	__builtin_memcpy(&nd->target, &router, sizeof(router));
	nd->opt_type = ND_OPT_TARGET_LL_ADDR;
	nd->opt_len = 1;
	__builtin_memcpy(nd->opt_mac, router_mac, ETH_ALEN);
	nd->checksum = nd_na_checksum(ip6, nd);
	return REPLY_READY;
}

/* Turns an echo request addressed to a router into that router's echo reply. */
static __always_inline enum reply_result icmp6_echo_reply(struct __sk_buff *ctx,
							  const __u8 *router_mac)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct icmp6hdr *icmp6 = data + ETH_HLEN + sizeof(struct ipv6hdr);
	struct in6_addr router;
	__u16 from;

	if ((void *)(icmp6 + 1) > data_end)
		return REPLY_NONE;
	if (icmp6->icmp6_code != 0 || !ipv6_is_router(&ip6->daddr))
		return REPLY_NONE;

	from = *(__u16 *)icmp6;
	icmp6->icmp6_type = ICMPV6_ECHO_REPLY;
	csum_replace2(&icmp6->icmp6_cksum, from, *(__u16 *)icmp6);

	/* Swapping the addresses leaves the pseudo-header sum unchanged. */
	__builtin_memcpy(&router, &ip6->daddr, sizeof(router));
	__builtin_memcpy(&ip6->daddr, &ip6->saddr, sizeof(ip6->daddr));
	__builtin_memcpy(&ip6->saddr, &router, sizeof(router));
	ip6->hop_limit = ICMP6_REPLY_HOP_LIMIT;
	eth_reply_macs(eth, router_mac);
	return REPLY_READY;
}

#endif /* CRS_ICMP6_H */
