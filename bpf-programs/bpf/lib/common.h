/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* Shared includes, return codes and packet access helpers of the cilium-rs datapath. */
#ifndef CRS_COMMON_H
#define CRS_COMMON_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Bumped whenever the key or value layout of a pinned map changes (docs/datapath.md). */
#define CRS_LAYOUT_VERSION 4

/* Verdicts: pass to the host stack, or drop. Redirects return the helper's result. */
#define CTX_ACT_OK   TC_ACT_OK
#define CTX_ACT_DROP TC_ACT_SHOT

/* Security identities (Cilium's numbering); 0 in a policy key means "any remote identity". */
#define IDENTITY_ANY   0
#define IDENTITY_HOST  1
#define IDENTITY_WORLD 2
#define IDENTITY_INIT  5
/* Local CIDR identities (addresses outside the host) start here, as Cilium numbers them. */
#define IDENTITY_MIN_CIDR (1U << 24)

/* Whether an identity stands for addresses outside the host: world, or a CIDR. */
static __always_inline bool identity_is_outside(__u32 identity)
{
	return identity == IDENTITY_WORLD || identity >= IDENTITY_MIN_CIDR;
}

/* Address families as the kernel's helpers (bpf_fib_lookup, bpf_redirect_neigh) take them. */
#define AF_INET	 2
#define AF_INET6 10

/* Address families as the maps store them. */
#define IP_FAMILY_V4 4
#define IP_FAMILY_V6 6

/* Directions, seen from the endpoint: metrics, policy keys and verdicts share them. */
#define METRIC_EGRESS  1 /* sent by the container */
#define METRIC_INGRESS 2 /* delivered to the container */

/* Outcome of a helper that may turn the packet into a reply in place. */
enum reply_result {
	REPLY_NONE,   /* not applicable: the packet is unchanged */
	REPLY_READY,  /* the packet is now a reply, to be sent back out of the same veth */
	REPLY_FAILED, /* the packet was being rewritten and is unusable: drop it */
};

static __always_inline void *ctx_data(const struct __sk_buff *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *ctx)
{
	return (void *)(long)ctx->data_end;
}

#endif /* CRS_COMMON_H */
