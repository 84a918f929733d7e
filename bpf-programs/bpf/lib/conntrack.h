/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Connection tracking and the one policy check (docs/datapath.md, "Policy and connection
 * tracking"). crs_ct holds one entry per flow, keyed by its addresses and ports in canonical
 * order so that both directions find it with one lookup. An entry remembers which checks the
 * flow passed — the initiator's egress policy, the responder's ingress policy — and at which
 * policy revision: a packet of an established flow costs one lookup; a new flow, or one whose
 * revision is stale (policy changed), is checked against crs_policy again, so revoking an
 * allow cuts established flows at their next packet.
 */
#ifndef CRS_CONNTRACK_H
#define CRS_CONNTRACK_H

#include "common.h"
#include "config.h"
#include "drop.h"
#include "flow.h"
#include "policy.h"

#define CT_MAX_ENTRIES 262144

#define CT_F_INITIATOR_HI 0x01 /* the flow's initiator is the key's hi side */
#define CT_F_EGRESS_OK	  0x02 /* the initiator's egress policy allows the flow */
#define CT_F_INGRESS_OK	  0x04 /* the responder's ingress policy allows the flow */
#define CT_F_SEEN_REPLY	  0x08
#define CT_F_FIN_ORIG	  0x10
#define CT_F_FIN_REPLY	  0x20
#define CT_F_CLOSING	  0x40 /* TCP RST, or FIN both ways: the entry just runs out */

#define NSEC_PER_SEC	    1000000000ULL
#define CT_LIFETIME_TCP_SYN (60 * NSEC_PER_SEC)	   /* TCP before the first reply */
#define CT_LIFETIME_TCP	    (21600 * NSEC_PER_SEC) /* established TCP */
#define CT_LIFETIME_CLOSING (10 * NSEC_PER_SEC)
#define CT_LIFETIME_OTHER   (60 * NSEC_PER_SEC) /* UDP, ICMP, … */
#define CT_REFRESH	    NSEC_PER_SEC	/* a deadline moves at most once a second */

/* Which checks apply where a packet is looked at. */
#define ENFORCE_SENDER	 1 /* the sender is the local endpoint whose program runs: its egress */
#define ENFORCE_RECEIVER 2 /* the receiver is a local endpoint: its ingress */

#define CT_ORIGINAL 0
#define CT_REPLY    1

struct ct_key {
	__u8 addr_lo[16];
	__u8 addr_hi[16];
	__be16 port_lo;
	__be16 port_hi;
	__u8 family;
	__u8 proto;
	__u16 pad;
};

_Static_assert(sizeof(struct ct_key) == 40, "ct_key layout (abi::CtKey)");

struct ct_entry {
	__u64 expires; /* bpf_ktime_get_coarse_ns() deadline */
	__u64 created;
	__u64 packets[2]; /* [CT_ORIGINAL], [CT_REPLY] */
	__u64 bytes[2];
	__u32 revision; /* policy revision the CT_F_*_OK flags were checked at */
	__u32 flags;	/* CT_F_* */
};

_Static_assert(sizeof(struct ct_entry) == 56, "ct_entry layout (abi::CtEntry)");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_ct SEC(".maps");

/* Fills the canonical key of the flow; true when the packet's sender is the key's hi side. */
static __always_inline bool ct_key_of(const struct flow *flow, struct ct_key *key)
{
	const __u32 *s = (const __u32 *)flow->saddr;
	const __u32 *d = (const __u32 *)flow->daddr;
	bool sender_hi = bpf_ntohs(flow->sport) > bpf_ntohs(flow->dport);

#pragma unroll
	for (int i = 3; i >= 0; i--) {
		if (s[i] != d[i])
			sender_hi = s[i] > d[i];
	}
	if (sender_hi) {
		__builtin_memcpy(key->addr_lo, flow->daddr, 16);
		__builtin_memcpy(key->addr_hi, flow->saddr, 16);
		key->port_lo = flow->dport;
		key->port_hi = flow->sport;
	} else {
		__builtin_memcpy(key->addr_lo, flow->saddr, 16);
		__builtin_memcpy(key->addr_hi, flow->daddr, 16);
		key->port_lo = flow->sport;
		key->port_hi = flow->dport;
	}
	key->family = flow->family;
	key->proto = flow->proto;
	key->pad = 0;
	return sender_hi;
}

/* The CT_F_*_OK flags a packet needs at this point: its sender's and receiver's checks. */
static __always_inline __u32 ct_needed(__u32 enforce, bool original)
{
	__u32 need = 0;

	if (enforce & ENFORCE_SENDER)
		need |= original ? CT_F_EGRESS_OK : CT_F_INGRESS_OK;
	if (enforce & ENFORCE_RECEIVER)
		need |= original ? CT_F_INGRESS_OK : CT_F_EGRESS_OK;
	return need;
}

/* The port policy is written against: the responder's, or the ICMP type of the first packet. */
static __always_inline __be16 ct_policy_port(const struct flow *flow, bool original)
{
	if (flow->proto == IPPROTO_ICMP || flow->proto == IPPROTO_ICMPV6) {
		if (icmp_is_echo(flow->family, flow->icmp_type))
			return bpf_htons(flow->family == IP_FAMILY_V6 ? ICMP6_ECHO_REQUEST
								      : ICMP_ECHO_REQUEST_V4);
		return bpf_htons(flow->icmp_type);
	}
	return original ? flow->dport : flow->sport;
}

/* Checks the `missing` CT_F_*_OK checks of the flow, in its original orientation. */
static __always_inline int ct_check(struct flow *flow, __u32 missing, bool original,
				    __u32 src_identity, __u32 dst_identity)
{
	__u32 initiator = original ? src_identity : dst_identity;
	__u32 responder = original ? dst_identity : src_identity;
	__be16 port = ct_policy_port(flow, original);
	int ret;

	if (missing & CT_F_EGRESS_OK) {
		ret = policy_verdict(initiator, responder, METRIC_EGRESS, flow->proto, port,
				     &flow->rule);
		if (ret != FORWARDED) {
			flow->denied_receiver = !original;
			return ret;
		}
	}
	if (missing & CT_F_INGRESS_OK) {
		ret = policy_verdict(responder, initiator, METRIC_INGRESS, flow->proto, port,
				     &flow->rule);
		if (ret != FORWARDED) {
			flow->denied_receiver = original;
			return ret;
		}
	}
	return FORWARDED;
}

/* The VERDICT_* bits of the CT_F_*_OK checks `missing`. */
static __always_inline __u8 verdict_checks(__u32 missing)
{
	return ((missing & CT_F_EGRESS_OK) ? VERDICT_EGRESS : 0) |
	       ((missing & CT_F_INGRESS_OK) ? VERDICT_INGRESS : 0);
}

/*
 * Reports the verdict of the policy checks crs_ct_policy made for this packet (flow->checked),
 * with result `ret`: FORWARDED, or the drop reason of the check that failed.
 */
__attribute__((noinline)) int crs_verdict_event(struct __sk_buff *ctx, struct flow *flow, __u32 ret,
						__u32 src_identity, __u32 dst_identity)
{
	struct event_args event = {
		.type = EVENT_VERDICT,
		.reason = (__u8)ret,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
	};

	if (!ctx || !flow)
		return 0;
	event.point = flow->checked;
	if (ret != FORWARDED)
		event.dir = flow->denied_receiver ? METRIC_INGRESS : METRIC_EGRESS;
	if (ret == DROP_POLICY_DENY_RULE)
		event.rule = flow->rule;
	return crs_event(ctx, &event);
}

static __always_inline bool tcp_opens(const struct flow *flow)
{
	return flow->proto == IPPROTO_TCP &&
	       (flow->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Counts the packet on its flow and moves the flow's deadline. */
static __always_inline void ct_account(struct ct_entry *entry, const struct flow *flow,
				       bool original, __u32 len, __u64 now)
{
	__u32 dir = original ? CT_ORIGINAL : CT_REPLY;
	__u64 lifetime = CT_LIFETIME_OTHER;
	__u32 flags;

	__sync_fetch_and_add(&entry->packets[dir], 1);
	__sync_fetch_and_add(&entry->bytes[dir], len);
	if (!original && !(entry->flags & CT_F_SEEN_REPLY))
		__sync_fetch_and_or(&entry->flags, CT_F_SEEN_REPLY);
	if (flow->proto == IPPROTO_TCP) {
		if (flow->tcp_flags & TCP_FLAG_RST) {
			__sync_fetch_and_or(&entry->flags, CT_F_CLOSING);
			entry->expires = now + CT_LIFETIME_CLOSING;
			return;
		}
		if (flow->tcp_flags & TCP_FLAG_FIN) {
			flags = original ? CT_F_FIN_ORIG : CT_F_FIN_REPLY;
			if ((entry->flags | flags) & CT_F_FIN_ORIG &&
			    (entry->flags | flags) & CT_F_FIN_REPLY) {
				__sync_fetch_and_or(&entry->flags, flags | CT_F_CLOSING);
				entry->expires = now + CT_LIFETIME_CLOSING;
				return;
			}
			__sync_fetch_and_or(&entry->flags, flags);
		}
		lifetime = (entry->flags & CT_F_SEEN_REPLY) ? CT_LIFETIME_TCP : CT_LIFETIME_TCP_SYN;
	}
	if (entry->flags & CT_F_CLOSING)
		return;
	if (entry->expires + CT_REFRESH < now + lifetime)
		entry->expires = now + lifetime;
}

/* Loads the packet an ICMP error quotes (its first 8 L4 bytes) into *inner. */
static __always_inline bool icmp_quoted_flow(struct __sk_buff *ctx, const struct flow *flow,
					     struct flow *inner)
{
	__u32 off = flow->l4_off + 8;
	__u8 l4[8];

	inner->family = flow->family;
	if (flow->family == IP_FAMILY_V6) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(ctx, off, &ip6, sizeof(ip6)) < 0)
			return false;
		__builtin_memcpy(inner->saddr, &ip6.saddr, 16);
		__builtin_memcpy(inner->daddr, &ip6.daddr, 16);
		inner->proto = ip6.nexthdr;
		off += sizeof(ip6);
	} else {
		struct iphdr ip4;

		if (bpf_skb_load_bytes(ctx, off, &ip4, sizeof(ip4)) < 0 || ip4.ihl < 5)
			return false;
		__builtin_memcpy(inner->saddr, &ip4.saddr, 4);
		__builtin_memcpy(inner->daddr, &ip4.daddr, 4);
		inner->proto = ip4.protocol;
		off += (__u32)ip4.ihl * 4;
	}
	if (bpf_skb_load_bytes(ctx, off, l4, sizeof(l4)) < 0)
		return false;
	switch (inner->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
		__builtin_memcpy(&inner->sport, &l4[0], 2);
		__builtin_memcpy(&inner->dport, &l4[2], 2);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* As crs_parse_flow keys ICMP flows: by echo id, or by type. */
		if (icmp_is_echo(inner->family, l4[0]))
			__builtin_memcpy(&inner->sport, &l4[4], 2);
		else
			inner->sport = bpf_htons(l4[0]);
		inner->dport = inner->sport;
		break;
	}
	return true;
}

/*
 * Whether an ICMP error is about a flow that is tracked and allowed at the current revision:
 * it must quote a packet its receiver sent (so it cannot be aimed at anybody else).
 */
static __always_inline bool ct_icmp_related(struct __sk_buff *ctx, const struct flow *flow,
					    __u32 revision, __u64 now)
{
	struct flow inner = {};
	struct ct_key key;
	struct ct_entry *entry;
	const __u32 *a, *b;

	if (!icmp_quoted_flow(ctx, flow, &inner))
		return false;
	a = (const __u32 *)inner.saddr;
	b = (const __u32 *)flow->daddr;
	if ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]))
		return false;
	ct_key_of(&inner, &key);
	entry = bpf_map_lookup_elem(&crs_ct, &key);
	return entry && entry->revision == revision && entry->expires > now;
}

/*
 * The policy and connection-tracking verdict for a packet of `flow` from `src_identity` to
 * `dst_identity`, with the checks `enforce` (ENFORCE_*) asks for at this point: FORWARDED, or a
 * drop reason (with flow->rule and flow->denied_receiver set). Called by the sender's program
 * (with ENFORCE_RECEIVER too when it delivers to a local endpoint itself, because the
 * receiver's program never runs on that path) and by the receiver's crs_to_container.
 */
__attribute__((noinline)) int crs_ct_policy(struct __sk_buff *ctx, struct flow *flow,
					    __u32 src_identity, __u32 dst_identity, __u32 enforce)
{
	struct ct_entry fresh = {};
	struct ct_entry *entry;
	struct ct_key key;
	__u32 revision, need, have;
	bool sender_hi, original;
	__u64 now;
	int ret;

	if (!flow)
		return DROP_MALFORMED;
	flow->checked = 0;
	now = bpf_ktime_get_coarse_ns();
	revision = config_policy_revision();
	if ((flow->proto == IPPROTO_ICMP || flow->proto == IPPROTO_ICMPV6) &&
	    flow->frag != FLOW_FRAG_LATER && icmp_is_error(flow->family, flow->icmp_type) &&
	    ct_icmp_related(ctx, flow, revision, now))
		return FORWARDED;

	sender_hi = ct_key_of(flow, &key);
	entry = bpf_map_lookup_elem(&crs_ct, &key);
	if (entry && (entry->expires <= now || (tcp_opens(flow) && (entry->flags & CT_F_CLOSING))))
		entry = NULL; /* run out, or a new connection on a closing tuple: a new flow */
	if (entry) {
		original = ((entry->flags & CT_F_INITIATOR_HI) != 0) == sender_hi;
		need = ct_needed(enforce, original);
		have = entry->revision == revision ? entry->flags : 0;
		if (need & ~have) {
			ret = ct_check(flow, need & ~have, original, src_identity, dst_identity);
			flow->checked = verdict_checks(need & ~have);
			if (ret != FORWARDED) {
				bpf_map_delete_elem(&crs_ct, &key);
				return ret;
			}
			if (entry->revision != revision) {
				__sync_fetch_and_and(&entry->flags,
						     ~(CT_F_EGRESS_OK | CT_F_INGRESS_OK));
				entry->revision = revision;
			}
			__sync_fetch_and_or(&entry->flags, need);
		}
		ct_account(entry, flow, original, ctx->len, now);
		return FORWARDED;
	}

	need = ct_needed(enforce, true);
	ret = ct_check(flow, need, true, src_identity, dst_identity);
	flow->checked = verdict_checks(need);
	if (ret != FORWARDED)
		return ret;
	fresh.created = now;
	fresh.revision = revision;
	fresh.flags = need | (sender_hi ? CT_F_INITIATOR_HI : 0);
	fresh.packets[CT_ORIGINAL] = 1;
	fresh.bytes[CT_ORIGINAL] = ctx->len;
	if (flow->proto == IPPROTO_TCP && (flow->tcp_flags & TCP_FLAG_RST)) {
		fresh.flags |= CT_F_CLOSING;
		fresh.expires = now + CT_LIFETIME_CLOSING;
	} else {
		fresh.expires = now + (flow->proto == IPPROTO_TCP ? CT_LIFETIME_TCP_SYN
								  : CT_LIFETIME_OTHER);
	}
	bpf_map_update_elem(&crs_ct, &key, &fresh, BPF_ANY);
	return FORWARDED;
}

/* crs_ct_policy, and the verdict event when it checked policy for this packet. */
static __always_inline int ct_policy(struct __sk_buff *ctx, struct flow *flow, __u32 src_identity,
				     __u32 dst_identity, __u32 enforce)
{
	int ret = crs_ct_policy(ctx, flow, src_identity, dst_identity, enforce);

	if (flow->checked)
		crs_verdict_event(ctx, flow, ret, src_identity, dst_identity);
	return ret;
}

#endif /* CRS_CONNTRACK_H */
