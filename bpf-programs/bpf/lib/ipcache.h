/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * crs_ipcache: which security identity an address has, as an LPM trie over both families.
 * Every endpoint address is in it (as a /32 or /128), the host's own addresses map to host,
 * CIDR identities to their prefixes; an address nothing covers is world.
 */
#ifndef CRS_IPCACHE_H
#define CRS_IPCACHE_H

#include "common.h"

#define IPCACHE_MAX_ENTRIES 262144

/* The family byte and padding are always matched in full: a prefix length is 32 + bits. */
#define IPCACHE_PREFIX_HEAD 32

struct ipcache_key {
	__u32 prefixlen; /* IPCACHE_PREFIX_HEAD + address prefix length */
	__u8 family;	 /* IP_FAMILY_V4 or IP_FAMILY_V6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key layout (abi::IpcacheKey)");

struct ipcache_value {
	__u32 identity;
	__u32 flags; /* reserved, zero */
};

_Static_assert(sizeof(struct ipcache_value) == 8, "ipcache_value layout (abi::IpcacheValue)");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_ipcache SEC(".maps");

/* The identity of an address (16 bytes, IPv4 in the first 4); world when nothing covers it. */
static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = {};
	struct ipcache_value *value;

	key.family = family;
	if (family == IP_FAMILY_V6) {
		key.prefixlen = IPCACHE_PREFIX_HEAD + 128;
		__builtin_memcpy(key.addr, addr, 16);
	} else {
		key.prefixlen = IPCACHE_PREFIX_HEAD + 32;
		__builtin_memcpy(key.addr, addr, 4);
	}
	value = bpf_map_lookup_elem(&crs_ipcache, &key);
	return value ? value->identity : IDENTITY_WORLD;
}

#endif /* CRS_IPCACHE_H */
