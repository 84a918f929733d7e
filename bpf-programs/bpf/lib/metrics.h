/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * crs_metrics: per-CPU packet and byte counters of each endpoint, forwarded and dropped by
 * reason, each way. One entry per endpoint, created by the daemon (the programs never create
 * one, so nothing outlives its endpoint); endpoint 0 counts what unknown interfaces saw.
 */
#ifndef CRS_METRICS_H
#define CRS_METRICS_H

#include "common.h"

/* Slots for drop reasons: every enum drop_reason value must be below this. */
#define METRICS_REASONS 32

/* Endpoints (65536, as crs_endpoints) plus endpoint 0. */
#define METRICS_MAX_ENTRIES 65537

struct traffic {
	__u64 packets;
	__u64 bytes;
};

struct endpoint_metrics {
	struct traffic forwarded[2];		    /* [dir - 1] */
	struct traffic dropped[2][METRICS_REASONS]; /* [dir - 1][reason] */
};

_Static_assert(sizeof(struct endpoint_metrics) == 1056,
	       "endpoint_metrics layout (abi::EndpointMetrics)");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_metrics);
	__uint(max_entries, METRICS_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_metrics SEC(".maps");

/* Adds one packet of `bytes` bytes to this CPU's counter (reason, dir) of the endpoint. */
static __always_inline void metrics_update(__u32 endpoint_id, __u8 reason, __u8 dir, __u64 bytes)
{
	struct endpoint_metrics *m = bpf_map_lookup_elem(&crs_metrics, &endpoint_id);
	struct traffic *t;
	__u32 d = (dir - 1) & 1;

	if (!m)
		return;
	if (reason == 0)
		t = &m->forwarded[d];
	else
		t = &m->dropped[d][reason & (METRICS_REASONS - 1)];
	t->packets += 1;
	t->bytes += bytes;
}

#endif /* CRS_METRICS_H */
