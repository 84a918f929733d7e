/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* Drop reasons (shared with abi::DropReason) and the one way to drop a packet. */
#ifndef CRS_DROP_H
#define CRS_DROP_H

#include "common.h"
#include "events.h"
#include "metrics.h"

enum drop_reason {
	FORWARDED = 0,		       /* not a drop: passed or delivered */
	DROP_MALFORMED = 1,	       /* truncated or invalid headers */
	DROP_SPOOFED_SOURCE = 2,       /* IP source address is not the endpoint's */
	DROP_SPOOFED_ARP = 3,	       /* ARP sender address is not the endpoint's */
	DROP_UNSUPPORTED_PROTOCOL = 4, /* ethertype other than IPv4, IPv6 or ARP */
	DROP_UNKNOWN_ENDPOINT = 5,     /* no crs_endpoints entry for this interface */
	DROP_POLICY_DENIED = 6,	       /* no rule allows the flow (default deny) */
	DROP_POLICY_DENY_RULE = 7,     /* a deny rule matches the flow */
	DROP_FRAGMENT_UNKNOWN = 8,     /* a non-first fragment whose first fragment was not seen */
	DROP_EXT_HEADERS = 9,	       /* more IPv6 extension headers than the datapath parses */
	DROP_INTERNAL_NETWORK = 10,    /* to or from outside, on an --internal network */
	DROP_NAT_NO_PORT = 11,	       /* every port of the NAT range is taken for this remote */
	DROP_NAT_NO_ADDRESS = 12,      /* the egress interface has no address of the family */
	DROP_NAT_UNSUPPORTED = 13,     /* a protocol masquerading cannot translate */
	DROP_NOT_PUBLISHED = 14,       /* from outside to a masqueraded endpoint's own address */
};

_Static_assert(DROP_NOT_PUBLISHED < METRICS_REASONS, "crs_metrics has a slot for every reason");

/* Counts the packet under `reason`, reports it to the daemon and drops it. */
static __always_inline int send_drop(const struct __sk_buff *ctx, __u32 endpoint_id,
				     enum drop_reason reason, __u8 dir)
{
	metrics_update(endpoint_id, (__u8)reason, dir, ctx->len);
	crs_drop_event((struct __sk_buff *)ctx, endpoint_id, reason, dir);
	return CTX_ACT_DROP;
}

#endif /* CRS_DROP_H */
