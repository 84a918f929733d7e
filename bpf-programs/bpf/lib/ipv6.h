/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* IPv6 address helpers. The endpoints' routers are fe80::<n> (n in 1..=0xffff, one per pool). */
#ifndef CRS_IPV6_H
#define CRS_IPV6_H

#include "common.h"

#define IPV6_HOP_LIMIT_ND 255 /* neighbour discovery messages must carry this hop limit */

static __always_inline bool ipv6_addr_equal(const struct in6_addr *a, const void *b)
{
	const __u32 *x = a->in6_u.u6_addr32;
	const __u32 *y = b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

static __always_inline bool ipv6_is_unspecified(const struct in6_addr *a)
{
	const __u32 *x = a->in6_u.u6_addr32;

	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* fe80::/10 */
static __always_inline bool ipv6_is_link_local(const struct in6_addr *a)
{
	return a->in6_u.u6_addr8[0] == 0xfe && (a->in6_u.u6_addr8[1] & 0xc0) == 0x80;
}

/* ff00::/8 */
static __always_inline bool ipv6_is_multicast(const struct in6_addr *a)
{
	return a->in6_u.u6_addr8[0] == 0xff;
}

/*
 * fe80::<n> with n in 1..=0xffff: an endpoints' IPv6 gateway (each pool has its own, so a
 * container on several networks routes each through its own interface). Interface ids the
 * kernel generates (EUI-64 or random) are never this small.
 */
static __always_inline bool ipv6_is_router(const struct in6_addr *a)
{
	const __u32 *x = a->in6_u.u6_addr32;

	return x[0] == bpf_htonl(0xfe800000) && (x[1] | x[2]) == 0 &&
	       (x[3] & bpf_htonl(0xffff0000)) == 0 && x[3] != 0;
}

/* ff02::1, all nodes on the link. */
static __always_inline void ipv6_set_all_nodes(struct in6_addr *a)
{
	a->in6_u.u6_addr32[0] = bpf_htonl(0xff020000);
	a->in6_u.u6_addr32[1] = 0;
	a->in6_u.u6_addr32[2] = 0;
	a->in6_u.u6_addr32[3] = bpf_htonl(1);
}

#endif /* CRS_IPV6_H */
