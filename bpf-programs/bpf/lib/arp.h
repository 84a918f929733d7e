/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* ARP over Ethernet for IPv4: parsing and in-place replies for the endpoint's gateway. */
#ifndef CRS_ARP_H
#define CRS_ARP_H

#include "common.h"
#include "eth.h"

#define ARP_HRD_ETHER  1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY   2

/* An ARP packet for IPv4 over Ethernet (RFC 826). */
struct arp_eth {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 sip[4];
	__u8 tha[ETH_ALEN];
	__u8 tip[4];
} __attribute__((packed));

static __always_inline bool arp_is_ipv4_over_ethernet(const struct arp_eth *arp)
{
	return arp->hrd == bpf_htons(ARP_HRD_ETHER) && arp->pro == bpf_htons(ETH_P_IP) &&
	       arp->hln == ETH_ALEN && arp->pln == 4;
}

static __always_inline __be32 arp_sender_ip(const struct arp_eth *arp)
{
	__be32 ip;

	__builtin_memcpy(&ip, arp->sip, sizeof(ip));
	return ip;
}

static __always_inline __be32 arp_target_ip(const struct arp_eth *arp)
{
	__be32 ip;

	__builtin_memcpy(&ip, arp->tip, sizeof(ip));
	return ip;
}

/* Rewrites a request for `ip` into the reply "ip is at mac", addressed to the requester. */
static __always_inline void arp_make_reply(struct ethhdr *eth, struct arp_eth *arp, __be32 ip,
					   const __u8 *mac)
{
	__be32 requester_ip = arp_sender_ip(arp);

	arp->op = bpf_htons(ARP_OP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->tip, &requester_ip, sizeof(requester_ip));
	__builtin_memcpy(arp->sha, mac, ETH_ALEN);
	__builtin_memcpy(arp->sip, &ip, sizeof(ip));
	eth_reply_macs(eth, mac);
}

#endif /* CRS_ARP_H */
