/* SPDX-License-Identifier: Apache-2.0 */
/* crs_metrics: per-endpoint, per-CPU packet and byte counters by verdict and direction. */
#ifndef CRS_METRICS_H
#define CRS_METRICS_H

#include "common.h"

#define METRIC_EGRESS  1 /* sent by the container */
#define METRIC_INGRESS 2 /* delivered to the container */

struct metrics_key {
	__u32 endpoint_id; /* 0 when the endpoint is unknown */
	__u8 reason;	   /* 0 = forwarded, else enum drop_reason */
	__u8 dir;	   /* METRIC_EGRESS or METRIC_INGRESS */
	__u16 pad;
};

_Static_assert(sizeof(struct metrics_key) == 8, "metrics_key layout (abi::MetricsKey)");

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct metrics_value) == 16, "metrics_value layout (abi::MetricsValue)");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_metrics SEC(".maps");

/* Adds one packet of `bytes` bytes to the counter (endpoint_id, reason, dir) of this CPU. */
static __always_inline void metrics_update(__u32 endpoint_id, __u8 reason, __u8 dir, __u64 bytes)
{
	struct metrics_key key = {
		.endpoint_id = endpoint_id,
		.reason = reason,
		.dir = dir,
	};
	struct metrics_value *value;
	struct metrics_value first = {
		.packets = 1,
		.bytes = bytes,
	};

	value = bpf_map_lookup_elem(&crs_metrics, &key);
	if (value) {
		value->packets += 1;
		value->bytes += bytes;
		return;
	}
	if (bpf_map_update_elem(&crs_metrics, &key, &first, BPF_NOEXIST) == 0)
		return;
	/* Another CPU created the entry in between: count on this CPU's slot of it. */
	value = bpf_map_lookup_elem(&crs_metrics, &key);
	if (value) {
		value->packets += 1;
		value->bytes += bytes;
	}
}

#endif /* CRS_METRICS_H */
