/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * crs_policy: what each local identity may send and receive, as an LPM trie keyed by
 * local identity · remote identity · direction · protocol · port (docs/datapath.md, "Policy").
 * The daemon resolves rules into these entries; here a new flow is looked up twice (its remote
 * identity, and "any remote identity"), a deny in either wins, else an allow, else default deny.
 */
#ifndef CRS_POLICY_H
#define CRS_POLICY_H

#include "common.h"
#include "drop.h"

#define POLICY_MAX_ENTRIES 524288

/* Bits of the key data: identities and direction always match in full. */
#define POLICY_PREFIX_ANY_PROTO 72 /* local (32) + remote (32) + direction (8) */
#define POLICY_PREFIX_FULL	96 /* + protocol (8) + port (16) */

#define POLICY_F_DENY 1

struct policy_key {
	__u32 prefixlen;
	__u32 local_identity;
	__u32 remote_identity; /* IDENTITY_ANY = every remote identity */
	__u8 dir;	       /* METRIC_EGRESS or METRIC_INGRESS */
	__u8 proto;	       /* IP protocol; with a prefix of 72 bits any protocol */
	__be16 port;	       /* destination port of the flow, or ICMP type; matched by prefix */
};

_Static_assert(sizeof(struct policy_key) == 16, "policy_key layout (abi::PolicyKey)");

struct policy_value {
	__u8 flags; /* POLICY_F_DENY */
	__u8 pad[3];
	__u32 rule; /* the rule that decides */
};

_Static_assert(sizeof(struct policy_value) == 8, "policy_value layout (abi::PolicyValue)");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_policy SEC(".maps");

/*
 * Whether `local` may send (dir egress) to, or receive (dir ingress) from, `remote` a flow of
 * `proto` to `port` (network order): FORWARDED, DROP_POLICY_DENY_RULE (with *rule set) or
 * DROP_POLICY_DENIED.
 */
static __always_inline int policy_verdict(__u32 local, __u32 remote, __u8 dir, __u8 proto,
					  __be16 port, __u32 *rule)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.local_identity = local,
		.remote_identity = remote,
		.dir = dir,
		.proto = proto,
		.port = port,
	};
	struct policy_value *exact, *any;

	exact = bpf_map_lookup_elem(&crs_policy, &key);
	key.remote_identity = IDENTITY_ANY;
	any = bpf_map_lookup_elem(&crs_policy, &key);
	if (exact && (exact->flags & POLICY_F_DENY)) {
		*rule = exact->rule;
		return DROP_POLICY_DENY_RULE;
	}
	if (any && (any->flags & POLICY_F_DENY)) {
		*rule = any->rule;
		return DROP_POLICY_DENY_RULE;
	}
	if (exact || any)
		return FORWARDED;
	return DROP_POLICY_DENIED;
}

#endif /* CRS_POLICY_H */
