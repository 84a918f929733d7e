/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The egress-interface programs (docs/datapath.md, "The outside world"): crs_to_world on tc
 * egress masquerades what endpoints send out, crs_from_world on tc ingress translates the
 * replies back — and connections to published ports to their endpoint — and delivers them
 * straight into the endpoint's container, under the endpoint's ingress policy. Every packet
 * that is not an endpoint's passes both untouched.
 */

/* Sends a packet from outside straight into the container of the local endpoint `dst`. */
static __always_inline int world_deliver(struct __sk_buff *ctx, struct flow *flow,
					 const struct local_ip *dst)
{
	const struct endpoint_info *ep = lookup_endpoint(dst->ifindex);
	void *data, *data_end;
	struct ethhdr *eth;
	int ret;

	if (!ep)
		return send_drop(ctx, dst->endpoint_id, DROP_UNKNOWN_ENDPOINT, METRIC_INGRESS);
	if (ep->flags & ENDPOINT_F_INTERNAL)
		return send_drop(ctx, ep->endpoint_id, DROP_INTERNAL_NETWORK, METRIC_INGRESS);
	ret = ct_policy(ctx, flow, ipcache_identity(flow->family, flow->saddr), ep->identity,
			ENFORCE_RECEIVER);
	if (ret != FORWARDED) {
		crs_dnat_forget(flow);
		return send_drop(ctx, ep->endpoint_id, ret, METRIC_INGRESS);
	}

	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	eth = data;
	if (flow->family == IP_FAMILY_V6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_INGRESS);
		/* The stack answers an expiring packet with the ICMP error. */
		if (ip6->hop_limit <= 1)
			return CTX_ACT_OK;
		ip6->hop_limit--;
	} else {
		struct iphdr *ip4 = data + ETH_HLEN;

		if ((void *)(ip4 + 1) > data_end)
			return send_drop(ctx, ep->endpoint_id, DROP_MALFORMED, METRIC_INGRESS);
		if (ip4->ttl <= 1)
			return CTX_ACT_OK;
		ipv4_set_ttl(ip4, ip4->ttl - 1);
	}
	eth_set_macs(eth, ep->host_mac, ep->mac);
	trace_packet(ctx, ep, TRACE_TO_ENDPOINT);
	bpf_skb_change_type(ctx, PACKET_HOST);
	metrics_update(ep->endpoint_id, FORWARDED, METRIC_INGRESS, ctx->len);
	return bpf_redirect_peer(dst->ifindex, 0);
}

SEC("classifier")
int crs_from_world(struct __sk_buff *ctx)
{
	const struct egress_iface *egress = lookup_egress(ctx->ifindex);
	const struct local_ip *dst;
	struct flow flow;
	bool to_egress;
	__u8 addr[16];
	int ret;

	if (!egress ||
	    (ctx->protocol != bpf_htons(ETH_P_IP) && ctx->protocol != bpf_htons(ETH_P_IPV6)))
		return CTX_ACT_OK;
	if (crs_parse_flow(ctx, &flow) != FORWARDED)
		return CTX_ACT_OK; /* the host's business: not a packet of ours */

	dst = flow.family == IP_FAMILY_V6 ? lookup_local_ip6((const struct in6_addr *)flow.daddr)
					  : lookup_local_ip4(*(const __be32 *)flow.daddr);
	if (dst) {
		/* Routed to an endpoint's own address: only networks without masquerading are. */
		const struct endpoint_info *ep = lookup_endpoint(dst->ifindex);

		if (ep && !(ep->flags & ENDPOINT_F_NO_MASQUERADE))
			return send_drop(ctx, dst->endpoint_id, DROP_NOT_PUBLISHED, METRIC_INGRESS);
		return world_deliver(ctx, &flow, dst);
	}

	/* Replies come to the egress address; published ports are on any address of the host. */
	to_egress = egress_addr(egress, flow.family, addr) && addr_equal(addr, flow.daddr);
	if (!to_egress && ipcache_identity(flow.family, flow.daddr) != IDENTITY_HOST)
		return CTX_ACT_OK;
	ret = crs_nat_in_translate(ctx, &flow, ctx->ifindex, true);
	if (ret == NAT_NOT_OURS && flow_is_icmp(&flow) && flow.frag != FLOW_FRAG_LATER &&
	    icmp_is_error(flow.family, flow.icmp_type))
		ret = crs_nat_icmp_error_in(ctx, &flow);
	if (ret == NAT_NOT_OURS)
		return CTX_ACT_OK;
	if (ret != FORWARDED)
		return send_drop(ctx, 0, ret, METRIC_INGRESS);

	dst = flow.family == IP_FAMILY_V6 ? lookup_local_ip6((const struct in6_addr *)flow.daddr)
					  : lookup_local_ip4(*(const __be32 *)flow.daddr);
	if (!dst)
		return send_drop(ctx, 0, DROP_UNKNOWN_ENDPOINT, METRIC_INGRESS);
	return world_deliver(ctx, &flow, dst);
}

SEC("classifier")
int crs_to_world(struct __sk_buff *ctx)
{
	const struct egress_iface *egress = lookup_egress(ctx->ifindex);
	const struct endpoint_info *ep;
	const struct local_ip *src;
	struct nat_entry *mapped;
	struct nat_entry out = {};
	struct flow flow;
	int ret;

	if (!egress ||
	    (ctx->protocol != bpf_htons(ETH_P_IP) && ctx->protocol != bpf_htons(ETH_P_IPV6)))
		return CTX_ACT_OK;
	ret = crs_parse_flow(ctx, &flow);
	/* The parser sets the family and addresses before it reads past the IP header. */
	if (!flow.family)
		return CTX_ACT_OK;
	src = flow.family == IP_FAMILY_V6 ? lookup_local_ip6((const struct in6_addr *)flow.saddr)
					  : lookup_local_ip4(*(const __be32 *)flow.saddr);
	if (!src)
		return CTX_ACT_OK; /* the host's own traffic, or Docker's */
	ep = lookup_endpoint(src->ifindex);
	if (!ep)
		return send_drop(ctx, src->endpoint_id, DROP_UNKNOWN_ENDPOINT, METRIC_EGRESS);
	if (ep->flags & ENDPOINT_F_INTERNAL)
		return send_drop(ctx, ep->endpoint_id, DROP_INTERNAL_NETWORK, METRIC_EGRESS);
	if (ep->flags & ENDPOINT_F_NO_MASQUERADE)
		return CTX_ACT_OK;
	/* What cannot be parsed cannot be masqueraded: it never leaves with the endpoint. */
	if (ret != FORWARDED)
		return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);

	mapped = nat_out_lookup(&flow);
	if (mapped) {
		__builtin_memcpy(&out, mapped, sizeof(out));
	} else {
		if (flow.frag == FLOW_FRAG_LATER)
			return send_drop(ctx, ep->endpoint_id, DROP_FRAGMENT_UNKNOWN,
					 METRIC_EGRESS);
		if (!nat_translatable(&flow))
			return send_drop(ctx, ep->endpoint_id, DROP_NAT_UNSUPPORTED, METRIC_EGRESS);
		if (!egress_addr(egress, flow.family, out.addr))
			return send_drop(ctx, ep->endpoint_id, DROP_NAT_NO_ADDRESS, METRIC_EGRESS);
		out.ifindex = ctx->ifindex;
		ret = crs_snat_new(&flow, &out);
		if (ret != FORWARDED)
			return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
	}
	ret = nat_rewrite(ctx, &flow, true, out.addr, out.port);
	if (ret != FORWARDED)
		return send_drop(ctx, ep->endpoint_id, ret, METRIC_EGRESS);
	return CTX_ACT_OK;
}
