/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* crs_config: settings the daemon changes while the programs run (one entry). */
#ifndef CRS_CONFIG_H
#define CRS_CONFIG_H

#include "common.h"

struct datapath_config {
	/*
	 * Bumped by the daemon after every change of what policy allows (entries, identities):
	 * connection-tracking entries checked at an older revision are checked again.
	 */
	__u32 policy_revision;
	__u32 flags; /* reserved, zero */
	/* Source ports (and ICMP echo ids) that masquerading hands out, inclusive. */
	__u16 nat_port_min;
	__u16 nat_port_max;
	__u32 pad;
	/* The host's network namespace: the socket programs translate only its sockets. */
	__u64 host_netns_cookie;
	/* Per CPU: one event every event_interval_ns after a burst of event_burst (0: none). */
	__u32 event_interval_ns;
	__u32 event_burst;
};

_Static_assert(sizeof(struct datapath_config) == 32,
	       "datapath_config layout (abi::DatapathConfig)");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct datapath_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_config SEC(".maps");

static __always_inline __u32 config_policy_revision(void)
{
	__u32 zero = 0;
	struct datapath_config *config = bpf_map_lookup_elem(&crs_config, &zero);

	return config ? config->policy_revision : 0;
}

/* The NAT port range; false until the daemon has configured one. */
static __always_inline bool config_nat_ports(__u16 *min, __u16 *max)
{
	__u32 zero = 0;
	struct datapath_config *config = bpf_map_lookup_elem(&crs_config, &zero);

	if (!config || !config->nat_port_min || config->nat_port_max < config->nat_port_min)
		return false;
	*min = config->nat_port_min;
	*max = config->nat_port_max;
	return true;
}

/* The cookie of the host's network namespace; 0 until the daemon has written it. */
static __always_inline __u64 config_host_netns(void)
{
	__u32 zero = 0;
	struct datapath_config *config = bpf_map_lookup_elem(&crs_config, &zero);

	return config ? config->host_netns_cookie : 0;
}

#endif /* CRS_CONFIG_H */
