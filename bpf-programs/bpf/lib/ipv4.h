/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* IPv4 header helpers. */
#ifndef CRS_IPV4_H
#define CRS_IPV4_H

#include "common.h"
#include "csum.h"

#define IPV4_FRAG_MASK 0x3fff /* more-fragments flag and fragment offset */

/* The 16-bit header word holding TTL and protocol, as covered by the header checksum. */
static __always_inline __u16 ipv4_ttl_word(const struct iphdr *ip4)
{
	return *(const __u16 *)&ip4->ttl;
}

/* Sets the TTL and fixes the header checksum. */
static __always_inline void ipv4_set_ttl(struct iphdr *ip4, __u8 ttl)
{
	__u16 from = ipv4_ttl_word(ip4);

	ip4->ttl = ttl;
	csum_replace2(&ip4->check, from, ipv4_ttl_word(ip4));
}

static __always_inline bool ipv4_is_fragment(const struct iphdr *ip4)
{
	return (ip4->frag_off & bpf_htons(IPV4_FRAG_MASK)) != 0;
}

#endif /* CRS_IPV4_H */
