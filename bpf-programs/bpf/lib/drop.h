/* SPDX-License-Identifier: Apache-2.0 */
/* Drop reasons (shared with abi::DropReason) and the one way to drop a packet. */
#ifndef CRS_DROP_H
#define CRS_DROP_H

#include "common.h"
#include "metrics.h"

enum drop_reason {
	FORWARDED = 0,		       /* not a drop: passed or delivered */
	DROP_MALFORMED = 1,	       /* truncated or invalid headers */
	DROP_SPOOFED_SOURCE = 2,       /* IP source address is not the endpoint's */
	DROP_SPOOFED_ARP = 3,	       /* ARP sender address is not the endpoint's */
	DROP_UNSUPPORTED_PROTOCOL = 4, /* ethertype other than IPv4, IPv6 or ARP */
	DROP_UNKNOWN_ENDPOINT = 5,     /* no crs_endpoints entry for this interface */
};

/* Counts the packet under `reason` and drops it. */
static __always_inline int send_drop(const struct __sk_buff *ctx, __u32 endpoint_id,
				     enum drop_reason reason, __u8 dir)
{
	metrics_update(endpoint_id, (__u8)reason, dir, ctx->len);
	return CTX_ACT_DROP;
}

#endif /* CRS_DROP_H */
