/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* ICMPv4: echo replies generated in place for the endpoint's IPv4 gateway. */
#ifndef CRS_ICMP_H
#define CRS_ICMP_H

#include "common.h"
#include "csum.h"
#include "eth.h"
#include "ipv4.h"

#define ICMP_ECHO_REPLY	  0
#define ICMP_ECHO_REQUEST 8

#define ICMP_REPLY_TTL 64

/* An ICMP echo header (RFC 792); <linux/icmp.h> is not usable here, it pulls in libc. */
struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

/*
 * Turns an ICMP echo request addressed to `gateway` into the gateway's echo reply. Only
 * unfragmented requests without IP options are answered; the rest is left alone.
 */
static __always_inline enum reply_result icmp4_echo_reply(struct __sk_buff *ctx, __be32 gateway,
							  const __u8 *gateway_mac)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct icmp_echo *icmp = data + ETH_HLEN + sizeof(struct iphdr);
	__u16 from;

	if ((void *)(icmp + 1) > data_end)
		return REPLY_NONE;
	if (ip4->ihl != 5 || ip4->protocol != IPPROTO_ICMP || ip4->daddr != gateway ||
	    ipv4_is_fragment(ip4))
		return REPLY_NONE;
	if (icmp->type != ICMP_ECHO_REQUEST || icmp->code != 0)
		return REPLY_NONE;

	from = *(__u16 *)icmp;
	icmp->type = ICMP_ECHO_REPLY;
	csum_replace2(&icmp->checksum, from, *(__u16 *)icmp);

	/* Swapping the addresses leaves the header checksum unchanged. */
	ip4->daddr = ip4->saddr;
	ip4->saddr = gateway;
	ipv4_set_ttl(ip4, ICMP_REPLY_TTL);
	eth_reply_macs(eth, gateway_mac);
	return REPLY_READY;
}

#endif /* CRS_ICMP_H */
