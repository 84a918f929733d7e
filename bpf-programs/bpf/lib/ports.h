/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * Published ports (docs/datapath.md, "Published ports"): crs_ports maps a host address — or
 * any address of the host — and a port to the endpoint address and port behind it. A
 * connection to a published port gets a mapping in crs_nat_in / crs_nat_out (NAT_F_DNAT):
 * what the client sends is translated to the endpoint, the endpoint's replies back to the
 * published address and port. The socket programs (sock.c) use the same map for the host's own
 * connections.
 */
#ifndef CRS_PORTS_H
#define CRS_PORTS_H

#include "common.h"
#include "nat.h"

#define PORTS_MAX_ENTRIES 16384

#define NAT_F_DNAT 2 /* a connection to a published port */

struct port_key {
	__u8 family;
	__u8 proto;
	__be16 port;
	__u8 addr[16]; /* all zero: any address of the host */
};

_Static_assert(sizeof(struct port_key) == 20, "port_key layout (abi::PortKey)");

struct port_target {
	__u8 addr[16]; /* the endpoint's address of the key's family */
	__be16 port;
	__u16 pad;
	__u32 endpoint_id;
};

_Static_assert(sizeof(struct port_target) == 24, "port_target layout (abi::PortTarget)");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct port_key);
	__type(value, struct port_target);
	__uint(max_entries, PORTS_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_ports SEC(".maps");

/*
 * The endpoint behind (addr, port): published on exactly that address, or — when `host_addr`
 * says the address is the host's — on every address of the host.
 */
static __always_inline const struct port_target *ports_lookup(__u8 family, __u8 proto, __be16 port,
							      const __u8 *addr, bool host_addr)
{
	struct port_key key = {};
	const struct port_target *target;

	key.family = family;
	key.proto = proto;
	key.port = port;
	__builtin_memcpy(key.addr, addr, 16);
	target = bpf_map_lookup_elem(&crs_ports, &key);
	if (target || !host_addr)
		return target;
	__builtin_memset(key.addr, 0, 16);
	return bpf_map_lookup_elem(&crs_ports, &key);
}

/* Whether a connection to a published port still goes where its mapping says. */
static __always_inline bool dnat_current(const struct flow *flow, const struct nat_entry *in)
{
	const struct port_target *target =
		ports_lookup(flow->family, flow->proto, flow->dport, flow->daddr, true);

	return target && addr_equal(target->addr, in->addr) && target->port == in->port;
}

/* Room for the two entries of a new connection, off the stack (tc programs only). */
struct dnat_scratch {
	struct nat_key in_key, out_key;
	struct nat_entry in, out;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct dnat_scratch);
	__uint(max_entries, 1);
} crs_dnat_scratch SEC(".maps");

/*
 * Maps a new connection to a published port onto its endpoint: the in entry translates what
 * the client sends, the out entry the endpoint's replies.
 */
static __always_inline void dnat_new(const struct flow *flow, const struct port_target *target,
				     __u32 ifindex)
{
	__u32 zero = 0;
	struct dnat_scratch *s = bpf_map_lookup_elem(&crs_dnat_scratch, &zero);
	__u64 now = bpf_ktime_get_coarse_ns();

	if (!s)
		return;
	__builtin_memset(s, 0, sizeof(*s));
	nat_key_of(flow, &s->in_key);
	__builtin_memcpy(s->in.addr, target->addr, 16);
	s->in.port = target->port;
	s->in.flags = NAT_F_DNAT;
	s->in.ifindex = ifindex;
	s->in.created = now;

	__builtin_memcpy(s->out_key.saddr, target->addr, 16);
	__builtin_memcpy(s->out_key.daddr, flow->saddr, 16);
	s->out_key.sport = target->port;
	s->out_key.dport = flow->sport;
	s->out_key.family = flow->family;
	s->out_key.proto = flow->proto;
	__builtin_memcpy(s->out.addr, flow->daddr, 16);
	s->out.port = flow->dport;
	s->out.flags = NAT_F_DNAT;
	s->out.ifindex = ifindex;
	s->out.created = now;

	bpf_map_update_elem(&crs_nat_in, &s->in_key, &s->in, BPF_ANY);
	bpf_map_update_elem(&crs_nat_out, &s->out_key, &s->out, BPF_ANY);
}

/*
 * Translates the destination of a packet sent to a host address back to an endpoint: a reply
 * of a masqueraded flow, a packet of a connection to a published port, or the first packet of
 * a new one (`host_addr`: the destination is an address of the host, so ports published on
 * every address apply). FORWARDED with the packet and *flow translated, NAT_NOT_OURS, or a drop
 * reason.
 */
__attribute__((noinline)) int crs_nat_in_translate(struct __sk_buff *ctx, struct flow *flow,
						   __u32 ifindex, bool host_addr)
{
	const struct port_target *target;
	struct nat_entry *in = NULL;
	struct nat_key key;
	__u8 addr[16];
	__be16 port;

	if (!flow)
		return DROP_MALFORMED;
	if (nat_may_be_reply(flow)) {
		nat_key_of(flow, &key);
		in = bpf_map_lookup_elem(&crs_nat_in, &key);
		/* A port published again since goes to its new endpoint. */
		if (in && (in->flags & NAT_F_DNAT) && !dnat_current(flow, in))
			in = NULL;
	}
	if (in) {
		__builtin_memcpy(addr, in->addr, 16);
		port = in->port;
	} else {
		if ((flow->proto != IPPROTO_TCP && flow->proto != IPPROTO_UDP) ||
		    flow->frag == FLOW_FRAG_LATER)
			return NAT_NOT_OURS;
		target = ports_lookup(flow->family, flow->proto, flow->dport, flow->daddr,
				      host_addr);
		if (!target)
			return NAT_NOT_OURS;
		dnat_new(flow, target, ifindex);
		__builtin_memcpy(addr, target->addr, 16);
		port = target->port;
	}
	return nat_rewrite(ctx, flow, false, addr, port);
}

/*
 * Translates the source of an endpoint's reply on a connection to one of its published ports
 * back to the published address and port. FORWARDED (translated or not one), or a drop reason.
 */
__attribute__((noinline)) int crs_dnat_reply(struct __sk_buff *ctx, struct flow *flow)
{
	const struct nat_entry *out;
	__u8 addr[16];

	if (!flow)
		return DROP_MALFORMED;
	out = nat_out_lookup(flow);
	if (!out || !(out->flags & NAT_F_DNAT))
		return FORWARDED;
	__builtin_memcpy(addr, out->addr, 16);
	return nat_rewrite(ctx, flow, true, addr, out->port);
}

/*
 * Forgets the translation of a connection to a published port that policy refused: `flow` is
 * the translated packet (to the endpoint). A refused flow leaves no state behind, so traffic
 * that policy keeps out cannot crowd live translations out of the LRU maps.
 */
__attribute__((noinline)) int crs_dnat_forget(struct flow *flow)
{
	const struct nat_entry *out;
	struct nat_key in_key = {};
	struct nat_key out_key;

	if (!flow)
		return 0;
	nat_key_of(flow, &out_key);
	__builtin_memcpy(out_key.saddr, flow->daddr, 16);
	__builtin_memcpy(out_key.daddr, flow->saddr, 16);
	out_key.sport = flow->dport;
	out_key.dport = flow->sport;
	out = bpf_map_lookup_elem(&crs_nat_out, &out_key);
	if (!out || !(out->flags & NAT_F_DNAT))
		return 0;
	__builtin_memcpy(in_key.saddr, flow->saddr, 16);
	__builtin_memcpy(in_key.daddr, out->addr, 16);
	in_key.sport = flow->sport;
	in_key.dport = out->port;
	in_key.family = flow->family;
	in_key.proto = flow->proto;
	bpf_map_delete_elem(&crs_nat_in, &in_key);
	bpf_map_delete_elem(&crs_nat_out, &out_key);
	return 0;
}

#endif /* CRS_PORTS_H */
