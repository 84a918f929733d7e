/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The one L3/L4 parser: addresses, protocol and ports of a packet, through IPv6 extension
 * headers and IPv4 options, with fragments handled explicitly. A first fragment records its
 * ports in crs_frags so that the later fragments of the datagram (which carry no L4 header)
 * get the same verdict; a later fragment whose first one was not seen is dropped.
 */
#ifndef CRS_FLOW_H
#define CRS_FLOW_H

#include "common.h"
#include "drop.h"

/* IPv6 extension headers followed before giving up (DROP_EXT_HEADERS). */
#define IPV6_MAX_EXT_HEADERS 8

#define IPPROTO_HOPOPTS_  0
#define IPPROTO_ROUTING_  43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_	  51
#define IPPROTO_DSTOPTS_  60

#define ICMP_ECHO_REPLY_V4     0
#define ICMP_DEST_UNREACH_V4   3
#define ICMP_ECHO_REQUEST_V4   8
#define ICMP_TIME_EXCEEDED_V4  11
#define ICMP_PARAMETER_PROB_V4 12
#define ICMP6_DEST_UNREACH     1
#define ICMP6_PARAM_PROB       4
#define ICMP6_ECHO_REQUEST     128
#define ICMP6_ECHO_REPLY       129
#define ICMP6_ND_FIRST	       133 /* router solicitation … */
#define ICMP6_ND_LAST	       137 /* … redirect */
#define ICMP6_MLD_QUERY	       130
#define ICMP6_MLD_REPORT       131
#define ICMP6_MLD_DONE	       132
#define ICMP6_MLD2_REPORT      143

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define FLOW_NOT_FRAGMENTED 0
#define FLOW_FRAG_FIRST	    1 /* the first fragment of a datagram: it has the L4 header */
#define FLOW_FRAG_LATER	    2 /* a later fragment: ports from crs_frags */

#define FRAGS_MAX_ENTRIES 8192

/* What the policy and connection tracking look at, parsed from one packet. */
struct flow {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes, the rest zero */
	__u8 daddr[16];
	__be16 sport; /* ICMP echo: the identifier; other ICMP: 0 */
	__be16 dport;
	__u8 family; /* IP_FAMILY_V4 or IP_FAMILY_V6 */
	__u8 proto;
	__u8 frag; /* FLOW_* */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 denied_receiver; /* set by crs_ct_policy: the receiver's ingress check failed */
	__u8 checked;	      /* set by crs_ct_policy: the VERDICT_* checks it made */
	__u32 l4_off;	      /* offset of the L4 header from the start of the frame */
	__u32 frag_id;	      /* IPv4 identification or IPv6 fragment identification */
	__u32 rule;	      /* set by crs_ct_policy: the deny rule that dropped the packet */
};

struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u8 family;
	__u8 proto;
	__u16 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
	__u8 icmp_type;
	__u8 proto; /* the datagram's L4 protocol (IPv6 later fragments do not show it) */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, FRAGS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_frags SEC(".maps");

static __always_inline bool icmp_is_echo(__u8 family, __u8 type)
{
	if (family == IP_FAMILY_V6)
		return type == ICMP6_ECHO_REQUEST || type == ICMP6_ECHO_REPLY;
	return type == ICMP_ECHO_REQUEST_V4 || type == ICMP_ECHO_REPLY_V4;
}

/* ICMP errors quote the packet they are about (RFC 792, RFC 4443). */
static __always_inline bool icmp_is_error(__u8 family, __u8 type)
{
	if (family == IP_FAMILY_V6)
		return type >= ICMP6_DEST_UNREACH && type <= ICMP6_PARAM_PROB;
	return type == ICMP_DEST_UNREACH_V4 || type == ICMP_TIME_EXCEEDED_V4 ||
	       type == ICMP_PARAMETER_PROB_V4;
}

/* The IPv6 extension headers the parser follows; any other next header ends the chain. */
static __always_inline bool ipv6_is_ext_header(__u8 next)
{
	return next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_ ||
	       next == IPPROTO_AH_ || next == IPPROTO_FRAGMENT_;
}

/* Neighbour discovery and multicast listener messages: the link's own business. */
static __always_inline bool icmp6_is_link_control(__u8 type)
{
	return (type >= ICMP6_ND_FIRST && type <= ICMP6_ND_LAST) || type == ICMP6_MLD_QUERY ||
	       type == ICMP6_MLD_REPORT || type == ICMP6_MLD_DONE || type == ICMP6_MLD2_REPORT;
}

/* Reads the ports (or ICMP type, code and echo id) of the L4 header at flow->l4_off. */
static __always_inline int parse_l4(struct __sk_buff *ctx, struct flow *flow)
{
	__u8 hdr[14];

	switch (flow->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(ctx, flow->l4_off, hdr, 14) < 0)
			return DROP_MALFORMED;
		flow->tcp_flags = hdr[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(ctx, flow->l4_off, hdr, 4) < 0)
			return DROP_MALFORMED;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if ((flow->proto == IPPROTO_ICMPV6) != (flow->family == IP_FAMILY_V6))
			return FORWARDED; /* the other family's ICMP: no ports */
		if (bpf_skb_load_bytes(ctx, flow->l4_off, hdr, 8) < 0)
			return DROP_MALFORMED;
		flow->icmp_type = hdr[0];
		flow->icmp_code = hdr[1];
		if (icmp_is_echo(flow->family, hdr[0])) {
			__builtin_memcpy(&flow->sport, &hdr[4], 2);
		} else {
			/* One flow per type: what policy allows for one type says nothing of
			 * another. */
			flow->sport = bpf_htons(hdr[0]);
		}
		flow->dport = flow->sport;
		return FORWARDED;
	default:
		return FORWARDED;
	}
	__builtin_memcpy(&flow->sport, &hdr[0], 2);
	__builtin_memcpy(&flow->dport, &hdr[2], 2);
	return FORWARDED;
}

/*
 * The datagram a fragment belongs to: addresses and id, and for IPv4 the protocol (RFC 791
 * makes the id unique per protocol; an IPv6 fragment id is unique per address pair, and a later
 * IPv6 fragment does not show the protocol).
 */
static __always_inline void frag_key_of(const struct flow *flow, struct frag_key *key)
{
	__builtin_memcpy(key->saddr, flow->saddr, 16);
	__builtin_memcpy(key->daddr, flow->daddr, 16);
	key->id = flow->frag_id;
	key->family = flow->family;
	key->proto = flow->family == IP_FAMILY_V6 ? 0 : flow->proto;
	key->pad = 0;
}

/* The L4 part of a parse: ports from the header, or from crs_frags for a later fragment. */
static __always_inline int parse_ports(struct __sk_buff *ctx, struct flow *flow)
{
	struct frag_key key;
	struct frag_ports ports, *known;
	int ret;

	if (flow->frag == FLOW_FRAG_LATER) {
		frag_key_of(flow, &key);
		known = bpf_map_lookup_elem(&crs_frags, &key);
		if (!known)
			return DROP_FRAGMENT_UNKNOWN;
		flow->sport = known->sport;
		flow->dport = known->dport;
		flow->icmp_type = known->icmp_type;
		flow->proto = known->proto;
		return FORWARDED;
	}
	ret = parse_l4(ctx, flow);
	if (ret == FORWARDED && flow->frag == FLOW_FRAG_FIRST) {
		frag_key_of(flow, &key);
		__builtin_memset(&ports, 0, sizeof(ports));
		ports.sport = flow->sport;
		ports.dport = flow->dport;
		ports.icmp_type = flow->icmp_type;
		ports.proto = flow->proto;
		bpf_map_update_elem(&crs_frags, &key, &ports, BPF_ANY);
	}
	return ret;
}

static __always_inline int parse_ipv6(struct __sk_buff *ctx, struct flow *flow)
{
	struct ipv6hdr ip6;
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 next, ext[8];
	__u16 frag_off;

	if (bpf_skb_load_bytes(ctx, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
		return DROP_MALFORMED;
	__builtin_memcpy(flow->saddr, &ip6.saddr, 16);
	__builtin_memcpy(flow->daddr, &ip6.daddr, 16);
	flow->family = IP_FAMILY_V6;
	next = ip6.nexthdr;

	/* Up to IPV6_MAX_EXT_HEADERS headers are followed; the header after them ends the chain. */
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (!ipv6_is_ext_header(next))
			break;
		switch (next) {
		case IPPROTO_AH_:
			if (bpf_skb_load_bytes(ctx, off, ext, 2) < 0)
				return DROP_MALFORMED;
			next = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT_:
			if (bpf_skb_load_bytes(ctx, off, ext, 8) < 0)
				return DROP_MALFORMED;
			next = ext[0];
			frag_off = ((__u16)ext[2] << 8) | ext[3];
			__builtin_memcpy(&flow->frag_id, &ext[4], 4);
			off += 8;
			if (frag_off & 0xfff8) {
				/* What follows is the middle of the datagram, not a header. */
				flow->frag = FLOW_FRAG_LATER;
				flow->l4_off = off;
				return parse_ports(ctx, flow);
			}
			if (frag_off & 1)
				flow->frag = FLOW_FRAG_FIRST;
			break;
		default: /* hop-by-hop, routing, destination options */
			if (bpf_skb_load_bytes(ctx, off, ext, 2) < 0)
				return DROP_MALFORMED;
			next = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
			break;
		}
	}
	if (ipv6_is_ext_header(next))
		return DROP_EXT_HEADERS;
	flow->proto = next;
	flow->l4_off = off;
	return parse_ports(ctx, flow);
}

static __always_inline int parse_ipv4(struct __sk_buff *ctx, struct flow *flow)
{
	struct iphdr ip4;
	__u16 frag_off;

	if (bpf_skb_load_bytes(ctx, ETH_HLEN, &ip4, sizeof(ip4)) < 0 || ip4.version != 4 ||
	    ip4.ihl < 5)
		return DROP_MALFORMED;
	__builtin_memcpy(flow->saddr, &ip4.saddr, 4);
	__builtin_memcpy(flow->daddr, &ip4.daddr, 4);
	flow->family = IP_FAMILY_V4;
	flow->proto = ip4.protocol;
	flow->l4_off = ETH_HLEN + (__u32)ip4.ihl * 4;
	flow->frag_id = bpf_ntohs(ip4.id);
	frag_off = bpf_ntohs(ip4.frag_off);
	if (frag_off & 0x1fff)
		flow->frag = FLOW_FRAG_LATER;
	else if (frag_off & 0x2000)
		flow->frag = FLOW_FRAG_FIRST;
	return parse_ports(ctx, flow);
}

/*
 * Parses the IPv6 or IPv4 packet in ctx into *flow (zeroed first): FORWARDED, or the drop
 * reason when it cannot be parsed.
 */
__attribute__((noinline)) int crs_parse_flow(struct __sk_buff *ctx, struct flow *flow)
{
	/* The verifier checks a global function on its own: its pointer arguments may be NULL. */
	if (!flow)
		return DROP_MALFORMED;
	__builtin_memset(flow, 0, sizeof(*flow));
	if (ctx->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(ctx, flow);
	if (ctx->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, flow);
	return DROP_UNSUPPORTED_PROTOCOL;
}

#endif /* CRS_FLOW_H */
