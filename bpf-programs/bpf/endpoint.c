/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The endpoint programs, attached to the host side of every endpoint veth (docs/datapath.md):
 * crs_from_container on tc ingress (what the container sends), crs_to_container on tc egress
 * (what the host stack sends to the container). Each finds its endpoint in crs_endpoints by
 * the interface index. Every IP packet passes the one parser (crs_parse_flow) and the one
 * policy and connection-tracking check (crs_ct_policy), both global functions that the
 * verifier checks once on their own.
 */
#include "common.h"
#include "arp.h"
#include "config.h"
#include "conntrack.h"
#include "csum.h"
#include "drop.h"
#include "endpoints.h"
#include "eth.h"
#include "events.h"
#include "flow.h"
#include "icmp.h"
#include "icmp6.h"
#include "ipcache.h"
#include "ipv4.h"
#include "ipv6.h"
#include "metrics.h"
#include "nat.h"
#include "policy.h"
#include "ports.h"

/* Counts a packet the container sent as forwarded and hands it to the host stack. */
static __always_inline int pass_to_stack(const struct __sk_buff *ctx, __u32 endpoint_id)
{
	metrics_update(endpoint_id, FORWARDED, METRIC_EGRESS, ctx->len);
	return CTX_ACT_OK;
}

/* Reports the packet when its endpoint is traced (ENDPOINT_F_TRACE). */
static __always_inline void trace_packet(const struct __sk_buff *ctx,
					 const struct endpoint_info *ep, __u8 point)
{
	if (ep->flags & ENDPOINT_F_TRACE)
		crs_trace_event((struct __sk_buff *)ctx, ep->endpoint_id, ep->identity, point);
}

/*
 * Sends a packet to the outside world through an egress interface, past the host stack (and
 * its netfilter FORWARD chain): the route the kernel would take, the next hop's MAC resolved
 * by the neighbour table, and the egress interface's crs_to_world masquerading it. A route
 * that does not leave through an egress interface, or an expiring TTL, is the host stack's.
 */
static __always_inline int forward_to_world(struct __sk_buff *ctx, const struct endpoint_info *ep,
					    const struct flow *flow)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	long ret;

	fib.ifindex = ctx->ifindex;
	fib.l4_protocol = flow->proto;
	if (flow->family == IP_FAMILY_V6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		if (ip6->hop_limit <= 1)
			return pass_to_stack(ctx, ep->endpoint_id);
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	} else {
		struct iphdr *ip4 = data + ETH_HLEN;

		if ((void *)(ip4 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		if (ip4->ttl <= 1)
			return pass_to_stack(ctx, ep->endpoint_id);
		fib.family = AF_INET;
		fib.tos = ip4->tos;
		fib.ipv4_src = ip4->saddr;
		fib.ipv4_dst = ip4->daddr;
	}
	ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS || !lookup_egress(fib.ifindex))
		return pass_to_stack(ctx, ep->endpoint_id);

	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	if (flow->family == IP_FAMILY_V6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		ip6->hop_limit--;
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	} else {
		struct iphdr *ip4 = data + ETH_HLEN;

		if ((void *)(ip4 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		ipv4_set_ttl(ip4, ip4->ttl - 1);
		/* An IPv4 route may have an IPv6 next hop (RFC 5549). */
		nh.nh_family = fib.family;
		if (fib.family == AF_INET6)
			__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
		else
			nh.ipv4_nh = fib.ipv4_dst;
	}
	metrics_update(ep->endpoint_id, FORWARDED, METRIC_EGRESS, ctx->len);
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

/*
 * Sends a reply built in place straight back into the container (the peer of the veth it came
 * from), so the host stack and crs_to_container never see the router's own answers.
 */
static __always_inline int send_reply(struct __sk_buff *ctx, __u32 endpoint_id, __u32 len,
				      enum reply_result result)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;

	if (result == REPLY_FAILED || (void *)(eth + 1) > data_end)
		return send_drop(ctx, endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	bpf_skb_change_type(ctx, (eth->h_dest[0] & 1) ? PACKET_MULTICAST : PACKET_HOST);
	metrics_update(endpoint_id, FORWARDED, METRIC_EGRESS, len);
	return bpf_redirect_peer(ctx->ifindex, 0);
}

/* Drops a packet policy refused, counted on the endpoint whose check failed. */
static __always_inline int policy_drop(const struct __sk_buff *ctx, struct flow *flow, int reason,
				       __u32 sender_id, __u32 receiver_id)
{
	/* A refused connection to a published port (hairpin) keeps no translation. */
	crs_dnat_forget(flow);
	if (flow->denied_receiver)
		return send_drop(ctx, receiver_id, reason, METRIC_INGRESS);
	return send_drop(ctx, sender_id, reason, METRIC_EGRESS);
}

/*
 * Delivers a packet to the local endpoint `dst` straight into its container, bypassing the host
 * stack. The caller has decremented the hop limit / TTL; this rewrites the MACs.
 */
static __always_inline int deliver_local(struct __sk_buff *ctx, __u32 src_endpoint_id,
					 const struct local_ip *dst,
					 const struct endpoint_info *dst_ep, struct ethhdr *eth)
{
	eth_set_macs(eth, dst_ep->host_mac, dst_ep->mac);
	trace_packet(ctx, dst_ep, TRACE_TO_ENDPOINT);
	metrics_update(src_endpoint_id, FORWARDED, METRIC_EGRESS, ctx->len);
	metrics_update(dst->endpoint_id, FORWARDED, METRIC_INGRESS, ctx->len);
	return bpf_redirect_peer(dst->ifindex, 0);
}

static __always_inline int handle_arp(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct arp_eth *arp = data + ETH_HLEN;
	__be32 sender;
	__u32 len = ctx->len;

	if ((void *)(arp + 1) > data_end || !arp_is_ipv4_over_ethernet(arp))
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);

	sender = arp_sender_ip(arp);
	if (sender != 0 && !(endpoint_has_ipv4(ep) && sender == ep->ipv4) &&
	    !sandbox_owns(lookup_local_ip4(sender), ep))
		return send_drop(ctx, ep->endpoint_id, DROP_SPOOFED_ARP, METRIC_EGRESS);

	if (arp->op == bpf_htons(ARP_OP_REQUEST) && endpoint_has_ipv4(ep) &&
	    arp_target_ip(arp) == ep->gateway_ipv4) {
		arp_make_reply(eth, arp, ep->gateway_ipv4, ep->host_mac);
		return send_reply(ctx, ep->endpoint_id, len, REPLY_READY);
	}
	return pass_to_stack(ctx, ep->endpoint_id);
}

/* ICMPv6 that the routers fe80::<n> answer themselves; REPLY_NONE for everything else. */
static __always_inline enum reply_result icmp6_answer(struct __sk_buff *ctx,
						      const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct icmp6hdr *icmp6 = data + ETH_HLEN + sizeof(struct ipv6hdr);

	if ((void *)(icmp6 + 1) > data_end)
		return REPLY_NONE;
	switch (icmp6->icmp6_type) {
	case ND_NEIGHBOUR_SOLICIT:
		return icmp6_ndisc_advertise(ctx, ep->host_mac);
	case ICMPV6_ECHO_REQUEST:
		return icmp6_echo_reply(ctx, ep->host_mac);
	default:
		return REPLY_NONE;
	}
}

/* The identity of an IPv6 destination the host stack receives. */
static __always_inline __u32 stack_identity6(const struct in6_addr *addr)
{
	/* Link-local and multicast destinations reach only the host side of the veth. */
	if (ipv6_is_link_local(addr) || ipv6_is_multicast(addr))
		return IDENTITY_HOST;
	return ipcache_identity(IP_FAMILY_V6, (const __u8 *)addr);
}

static __always_inline int handle_ipv6(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	const struct endpoint_info *dst_ep = NULL;
	const struct local_ip *dst = NULL;
	enum reply_result reply;
	struct flow flow;
	struct ethhdr *eth;
	__u32 len = ctx->len;
	__u32 dst_identity;
	bool own_source;
	int ret;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);

	own_source = (endpoint_has_ipv6(ep) && ipv6_addr_equal(&ip6->saddr, ep->ipv6)) ||
		     sandbox_owns(lookup_local_ip6(&ip6->saddr), ep);
	if (!own_source &&
	    !((ipv6_is_link_local(&ip6->saddr) || ipv6_is_unspecified(&ip6->saddr)) &&
	      (ipv6_is_link_local(&ip6->daddr) || ipv6_is_multicast(&ip6->daddr))))
		return send_drop(ctx, ep->endpoint_id, DROP_SPOOFED_SOURCE, METRIC_EGRESS);

	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		reply = icmp6_answer(ctx, ep);
		if (reply != REPLY_NONE)
			return send_reply(ctx, ep->endpoint_id, len, reply);
	}

	ret = crs_parse_flow(ctx, &flow);
	if (ret != FORWARDED)
		return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
	if (flow.proto == IPPROTO_ICMPV6 && icmp6_is_link_control(flow.icmp_type))
		return pass_to_stack(ctx, ep->endpoint_id);

	/* The helpers above may have moved the packet: reload the pointers. */
	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	/* A local endpoint first: the common case needs no ipcache lookup. */
	dst = own_source && ip6->hop_limit > 1 ? lookup_local_ip6(&ip6->daddr) : NULL;
	dst_ep = dst ? lookup_endpoint(dst->ifindex) : NULL;
	dst_identity = dst_ep ? dst_ep->identity : stack_identity6(&ip6->daddr);
	/* A published port of the host: the connection goes to its endpoint (hairpin). */
	if (own_source && !dst_ep && dst_identity == IDENTITY_HOST &&
	    !ipv6_is_multicast(&ip6->daddr)) {
		ret = crs_nat_in_translate(ctx, &flow, ctx->ifindex, true);
		if (ret != FORWARDED && ret != NAT_NOT_OURS)
			return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
		data = ctx_data(ctx);
		data_end = ctx_data_end(ctx);
		ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		if (ret == FORWARDED) {
			dst = ip6->hop_limit > 1 ? lookup_local_ip6(&ip6->daddr) : NULL;
			dst_ep = dst ? lookup_endpoint(dst->ifindex) : NULL;
			dst_identity = dst_ep ? dst_ep->identity : stack_identity6(&ip6->daddr);
		}
	}
	if ((ep->flags & ENDPOINT_F_INTERNAL) && identity_is_outside(dst_identity))
		return send_drop(ctx, ep->endpoint_id, DROP_INTERNAL_NETWORK, METRIC_EGRESS);

	ret = ct_policy(ctx, &flow, ep->identity, dst_identity,
			ENFORCE_SENDER | (dst_ep ? ENFORCE_RECEIVER : 0));
	if (ret != FORWARDED)
		return policy_drop(ctx, &flow, ret, ep->endpoint_id, dst ? dst->endpoint_id : 0);
	/* A reply on a connection to one of its published ports leaves from the published one. */
	if (ep->flags & ENDPOINT_F_PUBLISHED) {
		ret = crs_dnat_reply(ctx, &flow);
		if (ret != FORWARDED)
			return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
	}
	if (identity_is_outside(dst_identity))
		return forward_to_world(ctx, ep, &flow);
	if (!dst || !dst_ep)
		return pass_to_stack(ctx, ep->endpoint_id);

	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	eth = data;
	ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	ip6->hop_limit--;
	return deliver_local(ctx, ep->endpoint_id, dst, dst_ep, eth);
}

static __always_inline bool ipv4_is_multicast_or_broadcast(__be32 addr)
{
	return (addr & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) || addr == 0xffffffff;
}

/* The identity of an IPv4 destination the host stack receives. */
static __always_inline __u32 stack_identity4(__be32 addr, const struct endpoint_info *ep)
{
	/* The gateway, multicast and broadcast destinations reach only the host. */
	if (addr == ep->gateway_ipv4 || ipv4_is_multicast_or_broadcast(addr))
		return IDENTITY_HOST;
	return ipcache_identity(IP_FAMILY_V4, (const __u8 *)&addr);
}

static __always_inline int handle_ipv4(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct iphdr *ip4 = data + ETH_HLEN;
	const struct endpoint_info *dst_ep = NULL;
	const struct local_ip *dst = NULL;
	enum reply_result reply;
	struct flow flow;
	struct ethhdr *eth;
	__u32 len = ctx->len;
	__u32 dst_identity;
	__be32 daddr;
	int ret;

	if ((void *)(ip4 + 1) > data_end || ip4->version != 4 || ip4->ihl < 5)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	if (!(endpoint_has_ipv4(ep) && ip4->saddr == ep->ipv4) &&
	    !sandbox_owns(lookup_local_ip4(ip4->saddr), ep))
		return send_drop(ctx, ep->endpoint_id, DROP_SPOOFED_SOURCE, METRIC_EGRESS);

	if (ip4->daddr == ep->gateway_ipv4) {
		reply = icmp4_echo_reply(ctx, ep->gateway_ipv4, ep->host_mac);
		if (reply != REPLY_NONE)
			return send_reply(ctx, ep->endpoint_id, len, reply);
	}

	ret = crs_parse_flow(ctx, &flow);
	if (ret != FORWARDED)
		return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);

	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	/* A local endpoint first: the common case needs no ipcache lookup. */
	daddr = ip4->daddr;
	dst = ip4->ttl > 1 ? lookup_local_ip4(daddr) : NULL;
	dst_ep = dst ? lookup_endpoint(dst->ifindex) : NULL;
	dst_identity = dst_ep ? dst_ep->identity : stack_identity4(daddr, ep);
	/* A published port of the host: the connection goes to its endpoint (hairpin). */
	if (!dst_ep && dst_identity == IDENTITY_HOST && !ipv4_is_multicast_or_broadcast(daddr)) {
		ret = crs_nat_in_translate(ctx, &flow, ctx->ifindex, true);
		if (ret != FORWARDED && ret != NAT_NOT_OURS)
			return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
		data = ctx_data(ctx);
		data_end = ctx_data_end(ctx);
		ip4 = data + ETH_HLEN;
		if ((void *)(ip4 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
		if (ret == FORWARDED) {
			daddr = ip4->daddr;
			dst = ip4->ttl > 1 ? lookup_local_ip4(daddr) : NULL;
			dst_ep = dst ? lookup_endpoint(dst->ifindex) : NULL;
			dst_identity = dst_ep ? dst_ep->identity : stack_identity4(daddr, ep);
		}
	}
	if ((ep->flags & ENDPOINT_F_INTERNAL) && identity_is_outside(dst_identity))
		return send_drop(ctx, ep->endpoint_id, DROP_INTERNAL_NETWORK, METRIC_EGRESS);

	ret = ct_policy(ctx, &flow, ep->identity, dst_identity,
			ENFORCE_SENDER | (dst_ep ? ENFORCE_RECEIVER : 0));
	if (ret != FORWARDED)
		return policy_drop(ctx, &flow, ret, ep->endpoint_id, dst ? dst->endpoint_id : 0);
	/* A reply on a connection to one of its published ports leaves from the published one. */
	if (ep->flags & ENDPOINT_F_PUBLISHED) {
		ret = crs_dnat_reply(ctx, &flow);
		if (ret != FORWARDED)
			return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
	}
	if (identity_is_outside(dst_identity))
		return forward_to_world(ctx, ep, &flow);
	if (!dst || !dst_ep)
		return pass_to_stack(ctx, ep->endpoint_id);

	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	eth = data;
	ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	ipv4_set_ttl(ip4, ip4->ttl - 1);
	return deliver_local(ctx, ep->endpoint_id, dst, dst_ep, eth);
}

SEC("classifier")
int crs_from_container(struct __sk_buff *ctx)
{
	const struct endpoint_info *ep = lookup_endpoint(ctx->ifindex);
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);

	if (!ep)
		return send_drop(ctx, 0, DROP_UNKNOWN_ENDPOINT, METRIC_EGRESS);
	if (data + ETH_HLEN > data_end)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	trace_packet(ctx, ep, TRACE_FROM_ENDPOINT);

	switch (ctx->protocol) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(ctx, ep);
	case bpf_htons(ETH_P_IPV6):
		return handle_ipv6(ctx, ep);
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(ctx, ep);
	default:
		return send_drop(ctx, ep->endpoint_id, DROP_UNSUPPORTED_PROTOCOL, METRIC_EGRESS);
	}
}

/* The identity of the source of a packet the host stack sends to the container. */
static __always_inline __u32 source_identity(const struct flow *flow)
{
	const struct in6_addr *saddr = (const struct in6_addr *)flow->saddr;

	/* On the veth, link-local sources are the host side itself. */
	if (flow->family == IP_FAMILY_V6 &&
	    (ipv6_is_link_local(saddr) || ipv6_is_unspecified(saddr)))
		return IDENTITY_HOST;
	return ipcache_identity(flow->family, flow->saddr);
}

SEC("classifier")
int crs_to_container(struct __sk_buff *ctx)
{
	const struct endpoint_info *ep = lookup_endpoint(ctx->ifindex);
	struct flow flow;
	__u32 endpoint_id;
	int ret;

	if (!ep)
		return send_drop(ctx, 0, DROP_UNKNOWN_ENDPOINT, METRIC_INGRESS);
	endpoint_id = ep->endpoint_id;
	trace_packet(ctx, ep, TRACE_TO_ENDPOINT);

	switch (ctx->protocol) {
	case bpf_htons(ETH_P_ARP):
		break;
	case bpf_htons(ETH_P_IPV6):
	case bpf_htons(ETH_P_IP):
		ret = crs_parse_flow(ctx, &flow);
		if (ret != FORWARDED)
			return send_drop(ctx, endpoint_id, ret, METRIC_INGRESS);
		if (flow.proto == IPPROTO_ICMPV6 && icmp6_is_link_control(flow.icmp_type))
			break;
		ret = ct_policy(ctx, &flow, source_identity(&flow), ep->identity, ENFORCE_RECEIVER);
		if (ret != FORWARDED)
			return send_drop(ctx, endpoint_id, ret, METRIC_INGRESS);
		break;
	default:
		return send_drop(ctx, endpoint_id, DROP_UNSUPPORTED_PROTOCOL, METRIC_INGRESS);
	}
	metrics_update(endpoint_id, FORWARDED, METRIC_INGRESS, ctx->len);
	return CTX_ACT_OK;
}
