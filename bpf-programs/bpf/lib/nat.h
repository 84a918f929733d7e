/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Address translation towards the outside world (docs/datapath.md, "The outside world").
 * crs_egress lists the egress interfaces with the addresses endpoints are masqueraded to. Two
 * LRU maps hold every translated flow, one key per side:
 *   crs_nat_out: the flow as the endpoint sends it (endpoint -> remote) -> the source it leaves
 *                with (an egress address and a port of the NAT range);
 *   crs_nat_in:  the flow as it arrives from outside (remote -> egress address and port) ->
 *                the endpoint address and port it is for.
 * An out entry counts only while the in entry of its port still names its flow, and a port is
 * taken over once the connection-tracking entry of the flow holding it has run out: mappings
 * expire with their flows, and an entry the LRU dropped on one side is never half-used.
 */
#ifndef CRS_NAT_H
#define CRS_NAT_H

#include "common.h"
#include "config.h"
#include "conntrack.h"
#include "csum.h"
#include "drop.h"
#include "flow.h"

#define EGRESS_MAX_ENTRIES 64
#define NAT_MAX_ENTRIES	   262144
#define NAT_PORT_TRIES	   32 /* ports tried for a new flow before DROP_NAT_NO_PORT */

#define EGRESS_F_IPV4 1
#define EGRESS_F_IPV6 2

#define NAT_F_SNAT 1 /* masquerading of a flow an endpoint opened */

/* Byte offsets in the frame of the IP header fields translation rewrites. */
#define IPV4_CSUM_OFF  (ETH_HLEN + 10)
#define IPV4_SADDR_OFF (ETH_HLEN + 12)
#define IPV4_DADDR_OFF (ETH_HLEN + 16)
#define IPV6_SADDR_OFF (ETH_HLEN + 8)
#define IPV6_DADDR_OFF (ETH_HLEN + 24)

struct egress_iface {
	__u32 flags; /* EGRESS_F_*: which of the addresses are set */
	__be32 ipv4; /* masquerading source for IPv4 */
	__u8 ipv6[16];
};

_Static_assert(sizeof(struct egress_iface) == 24, "egress_iface layout (abi::EgressIface)");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex */
	__type(value, struct egress_iface);
	__uint(max_entries, EGRESS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_egress SEC(".maps");

struct nat_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport; /* ICMP echo: the id, in both */
	__be16 dport;
	__u8 family;
	__u8 proto;
	__u16 pad;
};

_Static_assert(sizeof(struct nat_key) == 40, "nat_key layout (abi::NatKey)");

struct nat_entry {
	__u8 addr[16]; /* out: the source the flow leaves with; in: the endpoint's address */
	__be16 port;   /* out: its source port; in: the endpoint's port */
	__u8 flags;    /* NAT_F_* */
	__u8 pad;
	__u32 ifindex; /* the egress interface of the mapping */
	__u64 created; /* bpf_ktime_get_coarse_ns() */
};

_Static_assert(sizeof(struct nat_entry) == 32, "nat_entry layout (abi::NatEntry)");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, NAT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_nat_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, NAT_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_nat_in SEC(".maps");

/* The egress interface a program runs on, if it is one. */
static __always_inline const struct egress_iface *lookup_egress(__u32 ifindex)
{
	return bpf_map_lookup_elem(&crs_egress, &ifindex);
}

static __always_inline bool addr_equal(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a;
	const __u32 *y = (const __u32 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]));
}

static __always_inline bool flow_is_icmp(const struct flow *flow)
{
	return flow->proto == IPPROTO_ICMP || flow->proto == IPPROTO_ICMPV6;
}

/* The egress interface's masquerading address of the flow's family, if it has one. */
static __always_inline bool egress_addr(const struct egress_iface *egress, __u8 family, __u8 *addr)
{
	__builtin_memset(addr, 0, 16);
	if (family == IP_FAMILY_V6) {
		if (!(egress->flags & EGRESS_F_IPV6))
			return false;
		__builtin_memcpy(addr, egress->ipv6, 16);
		return true;
	}
	if (!(egress->flags & EGRESS_F_IPV4))
		return false;
	__builtin_memcpy(addr, &egress->ipv4, 4);
	return true;
}

/* Whether masquerading can translate the flow: TCP, UDP, ICMP echo. */
static __always_inline bool nat_translatable(const struct flow *flow)
{
	switch (flow->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return true;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return (flow->proto == IPPROTO_ICMPV6) == (flow->family == IP_FAMILY_V6) &&
		       icmp_is_echo(flow->family, flow->icmp_type);
	default:
		return false;
	}
}

static __always_inline void nat_key_of(const struct flow *flow, struct nat_key *key)
{
	__builtin_memcpy(key->saddr, flow->saddr, 16);
	__builtin_memcpy(key->daddr, flow->daddr, 16);
	key->sport = flow->sport;
	key->dport = flow->dport;
	key->family = flow->family;
	key->proto = flow->proto;
	key->pad = 0;
}

/*
 * Whether a packet from outside can be a reply of a masqueraded flow. Of ICMP only an echo
 * reply can: an echo request to the egress address is the host's, whatever its identifier.
 */
static __always_inline bool nat_may_be_reply(const struct flow *flow)
{
	if (!flow_is_icmp(flow))
		return true;
	return flow->icmp_type ==
	       (flow->family == IP_FAMILY_V6 ? ICMP6_ECHO_REPLY : ICMP_ECHO_REPLY_V4);
}

/* The in key of the replies to `flow` once it leaves from (addr, port). */
static __always_inline void nat_reply_key(const struct flow *flow, const __u8 *addr, __be16 port,
					  struct nat_key *key)
{
	__builtin_memcpy(key->saddr, flow->daddr, 16);
	__builtin_memcpy(key->daddr, addr, 16);
	key->sport = flow_is_icmp(flow) ? port : flow->dport;
	key->dport = port;
	key->family = flow->family;
	key->proto = flow->proto;
	key->pad = 0;
}

/* Whether the in entry `in` (at `key`) still names the flow of the endpoint `flow`. */
static __always_inline bool nat_in_names(const struct nat_entry *in, const struct flow *flow)
{
	return addr_equal(in->addr, flow->saddr) && in->port == flow->sport;
}

/* Whether the endpoint flow an in entry translates to has run out (no live CT entry). */
static __always_inline bool nat_flow_gone(const struct nat_key *key, const struct nat_entry *in,
					  __u64 now)
{
	struct flow inner = {};
	struct ct_key ct;
	struct ct_entry *entry;

	__builtin_memcpy(inner.saddr, in->addr, 16);
	__builtin_memcpy(inner.daddr, key->saddr, 16);
	inner.family = key->family;
	inner.proto = key->proto;
	inner.sport = in->port;
	inner.dport = (key->proto == IPPROTO_ICMP || key->proto == IPPROTO_ICMPV6) ? in->port
										   : key->sport;
	ct_key_of(&inner, &ct);
	entry = bpf_map_lookup_elem(&crs_ct, &ct);
	return !entry || entry->expires <= now;
}

/* The live mapping of an endpoint's flow, or NULL. */
static __always_inline struct nat_entry *nat_out_lookup(const struct flow *flow)
{
	struct nat_key key, reply;
	struct nat_entry *out, *in;

	nat_key_of(flow, &key);
	out = bpf_map_lookup_elem(&crs_nat_out, &key);
	if (!out)
		return NULL;
	nat_reply_key(flow, out->addr, out->port, &reply);
	in = bpf_map_lookup_elem(&crs_nat_in, &reply);
	if (!in || !nat_in_names(in, flow))
		return NULL;
	return out;
}

/*
 * Maps a new flow of an endpoint to the source out->addr and a free port of the NAT range,
 * writing both entries: FORWARDED with out->port set, or DROP_NAT_NO_PORT. A port is free for
 * the flow when no live flow to the same remote address, port and protocol holds it.
 */
__attribute__((noinline)) int crs_snat_new(const struct flow *flow, struct nat_entry *out)
{
	struct nat_entry in = {};
	struct nat_entry *taken;
	struct nat_key key, reply;
	__u16 min, max, port;
	__u32 range, start;
	__u64 now;

	if (!flow || !out)
		return DROP_MALFORMED;
	if (!config_nat_ports(&min, &max))
		return DROP_NAT_NO_PORT;
	now = bpf_ktime_get_coarse_ns();
	range = (__u32)max - min + 1;
	start = bpf_get_prandom_u32() % range;
	__builtin_memcpy(in.addr, flow->saddr, 16);
	in.port = flow->sport;
	in.flags = NAT_F_SNAT;
	in.ifindex = out->ifindex;
	in.created = now;

	for (int i = 0; i < NAT_PORT_TRIES; i++) {
		port = min + (start + i) % range;
		nat_reply_key(flow, out->addr, bpf_htons(port), &reply);
		if (bpf_map_update_elem(&crs_nat_in, &reply, &in, BPF_NOEXIST) != 0) {
			taken = bpf_map_lookup_elem(&crs_nat_in, &reply);
			/* Still this flow's own port (its out entry was dropped): keep it. */
			if (!taken || !nat_in_names(taken, flow)) {
				if (taken && !nat_flow_gone(&reply, taken, now))
					continue;
				if (bpf_map_update_elem(&crs_nat_in, &reply, &in, BPF_ANY) != 0)
					continue;
			}
		}
		out->port = bpf_htons(port);
		out->flags = NAT_F_SNAT;
		out->created = now;
		nat_key_of(flow, &key);
		bpf_map_update_elem(&crs_nat_out, &key, out, BPF_ANY);
		return FORWARDED;
	}
	return DROP_NAT_NO_PORT;
}

/* Offset of the checksum translation must update in the flow's L4 header (0: none). */
static __always_inline __u32 nat_l4_csum_off(const struct flow *flow, __u64 *flags)
{
	*flags = 0;
	switch (flow->proto) {
	case IPPROTO_TCP:
		return flow->l4_off + 16;
	case IPPROTO_UDP:
		*flags = BPF_F_MARK_MANGLED_0; /* IPv4 UDP without a checksum keeps none */
		return flow->l4_off + 6;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return flow->l4_off + 2;
	default:
		return 0;
	}
}

/*
 * bpf_l4_csum_replace's flag for IPv6 (Linux 6.16, and stable kernels since): without it the
 * helper also moves skb->csum of a CHECKSUM_COMPLETE packet for a pseudo-header change, which
 * for IPv6 it must not. Defined here because older uapi headers lack it.
 */
#define CRS_F_IPV6 (1ULL << 7)

/* Applies an IPv6 pseudo-header address change to the L4 checksum at `off`. */
static __always_inline long nat_l4_csum_diff6(struct __sk_buff *ctx, __u32 off, __s64 diff,
					      __u64 flags)
{
	long ret = bpf_l4_csum_replace(ctx, off, 0, diff, BPF_F_PSEUDO_HDR | CRS_F_IPV6 | flags);

	/* A kernel that does not know the flag refuses it (and has the old behaviour). */
	if (ret == -22)
		ret = bpf_l4_csum_replace(ctx, off, 0, diff, BPF_F_PSEUDO_HDR | flags);
	return ret;
}

/*
 * Rewrites the source (or the destination) address and port of the packet of `flow` to
 * (addr, port), updating every checksum that covers them, and *flow with it. A later fragment
 * has no L4 header: only its address changes (its flow takes the new port all the same, as
 * the policy check after a reverse translation must see it). FORWARDED, or DROP_MALFORMED.
 */
static __always_inline int nat_rewrite(struct __sk_buff *ctx, struct flow *flow, bool source,
				       const __u8 *addr, __be16 port)
{
	__u8 *field = source ? flow->saddr : flow->daddr;
	__be16 *flow_port = source ? &flow->sport : &flow->dport;
	bool has_l4 = flow->frag != FLOW_FRAG_LATER;
	bool icmp = flow_is_icmp(flow);
	__u64 l4_flags;
	__u32 csum_off = nat_l4_csum_off(flow, &l4_flags);
	__u8 old[16], new[16];
	__be16 old_port = *flow_port;
	__u32 port_off;
	__s64 diff;

	if (!has_l4)
		csum_off = 0;
	__builtin_memcpy(old, field, 16);
	__builtin_memcpy(new, addr, 16);
	if (!addr_equal(old, new)) {
		if (flow->family == IP_FAMILY_V6) {
			diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
			if (bpf_skb_store_bytes(ctx, source ? IPV6_SADDR_OFF : IPV6_DADDR_OFF, new,
						16, 0) < 0)
				return DROP_MALFORMED;
			if (csum_off && nat_l4_csum_diff6(ctx, csum_off, diff, l4_flags) < 0)
				return DROP_MALFORMED;
		} else {
			__be32 from, to;

			__builtin_memcpy(&from, old, 4);
			__builtin_memcpy(&to, new, 4);
			if (bpf_skb_store_bytes(ctx, source ? IPV4_SADDR_OFF : IPV4_DADDR_OFF, &to,
						4, 0) < 0 ||
			    bpf_l3_csum_replace(ctx, IPV4_CSUM_OFF, from, to, 4) < 0)
				return DROP_MALFORMED;
			/* ICMPv4 has no pseudo-header. */
			if (csum_off && !icmp &&
			    bpf_l4_csum_replace(ctx, csum_off, from, to,
						BPF_F_PSEUDO_HDR | l4_flags | 4) < 0)
				return DROP_MALFORMED;
		}
		__builtin_memcpy(field, new, 16);
	}
	if (old_port != port) {
		if (has_l4) {
			/* An echo id sits at offset 4 and stands for both ports. */
			port_off = flow->l4_off + (icmp ? 4 : (source ? 0 : 2));
			if (bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0)
				return DROP_MALFORMED;
			if (csum_off &&
			    bpf_l4_csum_replace(ctx, csum_off, old_port, port, l4_flags | 2) < 0)
				return DROP_MALFORMED;
		}
		*flow_port = port;
		if (icmp) {
			flow->sport = port;
			flow->dport = port;
		}
	}
	return FORWARDED;
}

/* crs_nat_icmp_error_in: the ICMP error is not about a translated flow. */
#define NAT_NOT_OURS (-1)

/*
 * Translates an ICMP error that arrived for a masqueraded flow (it quotes the packet as it
 * left: from the egress address and a NAT port) back to the endpoint: the outer destination
 * and the quoted source address and port become the endpoint's, with the IP, ICMP and quoted IP
 * checksums updated (the quoted L4 checksum is left alone: receivers do not check it; the
 * quote may not even hold it). FORWARDED with *flow translated, NAT_NOT_OURS, or a drop reason.
 */
__attribute__((noinline)) int crs_nat_icmp_error_in(struct __sk_buff *ctx, struct flow *flow)
{
	struct flow inner = {};
	struct nat_key key;
	struct nat_entry *in;
	__u32 inner_off, icmp_csum, inner_l4, addr_off;
	__u8 old[16], new[16], ihl;
	__be16 old_csum, new_csum, old_port;
	__s64 diff;
	int ret;

	if (!flow)
		return DROP_MALFORMED;
	if (!icmp_quoted_flow(ctx, flow, &inner) || !addr_equal(inner.saddr, flow->daddr))
		return NAT_NOT_OURS;
	__builtin_memcpy(key.saddr, inner.daddr, 16);
	__builtin_memcpy(key.daddr, inner.saddr, 16);
	key.sport = inner.dport;
	key.dport = inner.sport;
	key.family = inner.family;
	key.proto = inner.proto;
	key.pad = 0;
	in = bpf_map_lookup_elem(&crs_nat_in, &key);
	if (!in)
		return NAT_NOT_OURS;
	__builtin_memcpy(new, in->addr, 16);
	old_port = inner.sport;

	ret = nat_rewrite(ctx, flow, false, new, flow->dport);
	if (ret != FORWARDED)
		return ret;

	inner_off = flow->l4_off + 8;
	icmp_csum = flow->l4_off + 2;
	__builtin_memcpy(old, inner.saddr, 16);
	if (flow->family == IP_FAMILY_V6) {
		addr_off = inner_off + 8;
		inner_l4 = inner_off + sizeof(struct ipv6hdr);
		diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
		if (bpf_skb_store_bytes(ctx, addr_off, new, 16, 0) < 0 ||
		    bpf_l4_csum_replace(ctx, icmp_csum, 0, diff, 0) < 0)
			return DROP_MALFORMED;
	} else {
		__be32 from, to;

		if (bpf_skb_load_bytes(ctx, inner_off, &ihl, 1) < 0 ||
		    bpf_skb_load_bytes(ctx, inner_off + 10, &old_csum, 2) < 0)
			return DROP_MALFORMED;
		addr_off = inner_off + 12;
		inner_l4 = inner_off + (__u32)(ihl & 0x0f) * 4;
		__builtin_memcpy(&from, old, 4);
		__builtin_memcpy(&to, new, 4);
		new_csum = old_csum;
		csum_replace2(&new_csum, (__u16)from, (__u16)to);
		csum_replace2(&new_csum, (__u16)(from >> 16), (__u16)(to >> 16));
		if (bpf_skb_store_bytes(ctx, addr_off, &to, 4, 0) < 0 ||
		    bpf_l4_csum_replace(ctx, icmp_csum, from, to, 4) < 0 ||
		    bpf_skb_store_bytes(ctx, inner_off + 10, &new_csum, 2, 0) < 0 ||
		    bpf_l4_csum_replace(ctx, icmp_csum, old_csum, new_csum, 2) < 0)
			return DROP_MALFORMED;
	}
	if (old_port != in->port) {
		__u32 port_off =
			inner_l4 +
			((inner.proto == IPPROTO_ICMP || inner.proto == IPPROTO_ICMPV6) ? 4 : 0);
		__be16 port = in->port;

		if (bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0 ||
		    bpf_l4_csum_replace(ctx, icmp_csum, old_port, port, 2) < 0)
			return DROP_MALFORMED;
	}
	return FORWARDED;
}

#endif /* CRS_NAT_H */
