/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* crs_endpoints (who am I, by host-side ifindex) and crs_local_ips (which endpoint owns an IP). */
#ifndef CRS_ENDPOINTS_H
#define CRS_ENDPOINTS_H

#include "common.h"

#define ENDPOINT_F_IPV4		 1
#define ENDPOINT_F_IPV6		 2
#define ENDPOINT_F_INTERNAL	 4  /* its network is --internal: nothing to or from outside */
#define ENDPOINT_F_NO_MASQUERADE 8  /* its network is routed: it leaves with its own address */
#define ENDPOINT_F_PUBLISHED	 16 /* ports of the host are published to it */
#define ENDPOINT_F_TRACE	 32 /* every packet it sends or receives is an event */

struct endpoint_info {
	__u32 endpoint_id;	 /* daemon-assigned endpoint number, key of crs_metrics */
	__u32 flags;		 /* ENDPOINT_F_* */
	__u8 ipv6[16];		 /* the endpoint's IPv6 address */
	__be32 ipv4;		 /* the endpoint's IPv4 address */
	__be32 gateway_ipv4;	 /* the endpoint's link-local IPv4 gateway */
	__u8 mac[ETH_ALEN];	 /* container-side MAC */
	__u8 host_mac[ETH_ALEN]; /* host-side MAC */
	__u32 sandbox_id;	 /* the container (all its endpoints share it) */
	__u32 identity;		 /* the endpoint's security identity */
	__u32 pad;
};

_Static_assert(sizeof(struct endpoint_info) == 56, "endpoint_info layout (abi::EndpointInfo)");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_endpoints SEC(".maps");

struct ip_key {
	__u8 family; /* IP_FAMILY_V4 or IP_FAMILY_V6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
};

_Static_assert(sizeof(struct ip_key) == 20, "ip_key layout (abi::IpKey)");

struct local_ip {
	__u32 ifindex; /* host-side ifindex of the endpoint holding the address */
	__u32 endpoint_id;
	__u32 sandbox_id; /* the container holding the address */
};

_Static_assert(sizeof(struct local_ip) == 12, "local_ip layout (abi::LocalIp)");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ip_key);
	__type(value, struct local_ip);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_local_ips SEC(".maps");

static __always_inline const struct endpoint_info *lookup_endpoint(__u32 ifindex)
{
	return bpf_map_lookup_elem(&crs_endpoints, &ifindex);
}

static __always_inline bool endpoint_has_ipv4(const struct endpoint_info *ep)
{
	return (ep->flags & ENDPOINT_F_IPV4) != 0;
}

static __always_inline bool endpoint_has_ipv6(const struct endpoint_info *ep)
{
	return (ep->flags & ENDPOINT_F_IPV6) != 0;
}

static __always_inline const struct local_ip *lookup_local_ip4(__be32 addr)
{
	struct ip_key key = {};

	key.family = IP_FAMILY_V4;
	__builtin_memcpy(key.addr, &addr, sizeof(addr));
	return bpf_map_lookup_elem(&crs_local_ips, &key);
}

static __always_inline const struct local_ip *lookup_local_ip6(const struct in6_addr *addr)
{
	struct ip_key key = {};

	key.family = IP_FAMILY_V6;
	__builtin_memcpy(key.addr, addr, sizeof(*addr));
	return bpf_map_lookup_elem(&crs_local_ips, &key);
}

/*
 * Whether an address belongs to the endpoint's container, through another of its endpoints: a
 * container on several networks answers on one interface for an address of another (its
 * replies follow its single default route).
 */
static __always_inline bool sandbox_owns(const struct local_ip *holder,
					 const struct endpoint_info *ep)
{
	return holder && holder->sandbox_id == ep->sandbox_id;
}

#endif /* CRS_ENDPOINTS_H */
