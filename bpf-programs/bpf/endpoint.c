/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The endpoint programs, attached to the host side of every endpoint veth (docs/datapath.md):
 * crs_from_container on tc ingress (what the container sends), crs_to_container on tc egress
 * (what the host stack sends to the container). Each finds its endpoint in crs_endpoints by
 * the interface index.
 */
#include "common.h"
#include "arp.h"
#include "csum.h"
#include "drop.h"
#include "endpoints.h"
#include "eth.h"
#include "icmp.h"
#include "icmp6.h"
#include "ipv4.h"
#include "ipv6.h"
#include "metrics.h"

/* Counts a packet the container sent as forwarded and hands it to the host stack. */
static __always_inline int pass_to_stack(const struct __sk_buff *ctx, __u32 endpoint_id)
{
	metrics_update(endpoint_id, FORWARDED, METRIC_EGRESS, ctx->len);
	return CTX_ACT_OK;
}

/* Sends a reply built in place back out of the veth it came from, towards the container. */
static __always_inline int send_reply(struct __sk_buff *ctx, __u32 endpoint_id, __u32 len,
				      enum reply_result result)
{
	if (result == REPLY_FAILED)
		return send_drop(ctx, endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	metrics_update(endpoint_id, FORWARDED, METRIC_EGRESS, len);
	return bpf_redirect(ctx->ifindex, 0);
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

/* ICMPv6 that the router fe80::1 answers itself; REPLY_NONE for everything else. */
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

static __always_inline int handle_ipv6(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	const struct endpoint_info *dst_ep;
	const struct local_ip *dst;
	enum reply_result reply;
	__u32 len = ctx->len;
	bool own_source;

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
		/* Not answered: the packet is unchanged, but the pointers must be reloaded. */
		data = ctx_data(ctx);
		data_end = ctx_data_end(ctx);
		eth = data;
		ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	}

	/* Link-local traffic is for the host side of this link. */
	if (!own_source)
		return pass_to_stack(ctx, ep->endpoint_id);

	dst = lookup_local_ip6(&ip6->daddr);
	if (!dst || ip6->hop_limit <= 1)
		return pass_to_stack(ctx, ep->endpoint_id);
	dst_ep = lookup_endpoint(dst->ifindex);
	if (!dst_ep)
		return pass_to_stack(ctx, ep->endpoint_id);

	ip6->hop_limit--;
	return deliver_local(ctx, ep->endpoint_id, dst, dst_ep, eth);
}

static __always_inline int handle_ipv4(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	const struct endpoint_info *dst_ep;
	const struct local_ip *dst;
	enum reply_result reply;
	__u32 len = ctx->len;

	if ((void *)(ip4 + 1) > data_end || ip4->version != 4 || ip4->ihl < 5)
		return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_EGRESS);
	if (!(endpoint_has_ipv4(ep) && ip4->saddr == ep->ipv4) &&
	    !sandbox_owns(lookup_local_ip4(ip4->saddr), ep))
		return send_drop(ctx, ep->endpoint_id, DROP_SPOOFED_SOURCE, METRIC_EGRESS);

	if (ip4->daddr == ep->gateway_ipv4) {
		reply = icmp4_echo_reply(ctx, ep->gateway_ipv4, ep->host_mac);
		if (reply != REPLY_NONE)
			return send_reply(ctx, ep->endpoint_id, len, reply);
		return pass_to_stack(ctx, ep->endpoint_id);
	}

	dst = lookup_local_ip4(ip4->daddr);
	if (!dst || ip4->ttl <= 1)
		return pass_to_stack(ctx, ep->endpoint_id);
	dst_ep = lookup_endpoint(dst->ifindex);
	if (!dst_ep)
		return pass_to_stack(ctx, ep->endpoint_id);

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

SEC("classifier")
int crs_to_container(struct __sk_buff *ctx)
{
	const struct endpoint_info *ep = lookup_endpoint(ctx->ifindex);

	metrics_update(ep ? ep->endpoint_id : 0, FORWARDED, METRIC_INGRESS, ctx->len);
	return CTX_ACT_OK;
}

char __license[] SEC("license") = "Apache-2.0";
