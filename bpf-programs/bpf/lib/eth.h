/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* Ethernet header helpers. */
#ifndef CRS_ETH_H
#define CRS_ETH_H

#include "common.h"

/* Turns the frame around: back to its sender, from `own_mac`. */
static __always_inline void eth_reply_macs(struct ethhdr *eth, const __u8 *own_mac)
{
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, own_mac, ETH_ALEN);
}

static __always_inline void eth_set_macs(struct ethhdr *eth, const __u8 *src, const __u8 *dst)
{
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
}

#endif /* CRS_ETH_H */
