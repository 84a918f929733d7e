/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * crs_events: drops, policy verdicts and traces, from the programs to the daemon through a ring
 * buffer (docs/datapath.md, "Events"). Each CPU may emit `crs_config.event_burst` events at
 * once and one every `event_interval_ns` after that (crs_event_rate); what the limit or a full
 * ring keeps back is counted, never waited for, so a flood of drops can neither starve the
 * daemon nor slow the datapath.
 */
#ifndef CRS_EVENTS_H
#define CRS_EVENTS_H

#include "common.h"
#include "config.h"

#define EVENT_DROP    1
#define EVENT_VERDICT 2
#define EVENT_TRACE   3

/* Trace observation points. */
#define TRACE_FROM_ENDPOINT 1 /* sent by the endpoint, seen by crs_from_container */
#define TRACE_TO_ENDPOINT   2 /* on its way into the endpoint */

/* Verdict: the checks made (event.point). */
#define VERDICT_EGRESS	1 /* the sender's egress policy */
#define VERDICT_INGRESS 2 /* the receiver's ingress policy */

/* Bytes of the packet an event carries, from its Ethernet header. */
#define EVENT_SAMPLE 128

#define EVENT_RING_BYTES (1 << 20) /* the daemon may set another size at load */

/*
 * The reader is woken only once this much waits in the ring; it also drains the ring every
 * few milliseconds by itself, so a lone event waits at most that long and a stream of events
 * costs one wakeup per batch, not one per event.
 */
#define EVENT_WAKEUP_BYTES (64 * 1024)

struct event {
	__u64 time;	    /* bpf_ktime_get_ns() */
	__u8 type;	    /* EVENT_* */
	__u8 reason;	    /* drop reason; verdict: FORWARDED or the policy drop reason */
	__u8 dir;	    /* METRIC_EGRESS or METRIC_INGRESS; 0 when not known */
	__u8 point;	    /* trace: TRACE_*; verdict: the ENFORCE_* checks made */
	__u32 endpoint_id;  /* 0 when not known */
	__u32 src_identity; /* 0 when not known */
	__u32 dst_identity;
	__u32 rule;	  /* verdict DROP_POLICY_DENY_RULE: the deny rule */
	__u32 ifindex;	  /* where the program ran */
	__u32 len;	  /* the packet's length */
	__u16 sample_len; /* bytes of sample[] that hold the packet */
	__u16 pad;
	__u8 sample[EVENT_SAMPLE];
};

_Static_assert(sizeof(struct event) == 168, "event layout (abi::Event)");

/* What a caller says about an event; crs_event adds the time, the place and the packet. */
struct event_args {
	__u8 type;
	__u8 reason;
	__u8 dir;
	__u8 point;
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule;
};

struct event_rate {
	__u64 next;	  /* this CPU's theoretical arrival time of its next event */
	__u64 emitted;	  /* events written to the ring */
	__u64 suppressed; /* events the rate limit or a full ring kept back */
};

_Static_assert(sizeof(struct event_rate) == 24, "event_rate layout (abi::EventRate)");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENT_RING_BYTES);
} crs_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_rate);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_event_rate SEC(".maps");

/*
 * Sends one event about the packet in `ctx`, if this CPU's budget allows it (a generic cell
 * rate: a burst of `event_burst` events, then one per `event_interval_ns`). Never fails the
 * caller; returns 1 when the event went out.
 */
__attribute__((noinline)) int crs_event(struct __sk_buff *ctx, struct event_args *args)
{
	struct datapath_config *config;
	struct event_rate *rate;
	struct event *event;
	__u32 zero = 0;
	__u64 now, next, interval, burst;
	__u32 len;

	if (!ctx || !args)
		return 0;
	config = bpf_map_lookup_elem(&crs_config, &zero);
	rate = bpf_map_lookup_elem(&crs_event_rate, &zero);
	if (!config || !rate || !config->event_interval_ns)
		return 0;
	interval = config->event_interval_ns;
	now = bpf_ktime_get_ns();
	burst = config->event_burst ? config->event_burst : 1;
	next = rate->next > now ? rate->next : now;
	/* Further ahead than this budget ever gets: the budget changed; start afresh. */
	if (next - now > interval * burst)
		next = now;
	/* Up to `event_burst` events may be early by one interval each. */
	if (next - now > interval * (burst - 1)) {
		rate->suppressed++;
		return 0;
	}
	event = bpf_ringbuf_reserve(&crs_events, sizeof(*event), 0);
	if (!event) {
		rate->suppressed++;
		return 0;
	}
	rate->next = next + interval;
	rate->emitted++;
	event->time = now;
	event->type = args->type;
	event->reason = args->reason;
	event->dir = args->dir;
	event->point = args->point;
	event->endpoint_id = args->endpoint_id;
	event->src_identity = args->src_identity;
	event->dst_identity = args->dst_identity;
	event->rule = args->rule;
	event->ifindex = ctx->ifindex;
	event->len = ctx->len;
	event->pad = 0;
	len = ctx->len < EVENT_SAMPLE ? ctx->len : EVENT_SAMPLE;
	event->sample_len = 0;
	if (len > 0 && len <= EVENT_SAMPLE && bpf_skb_load_bytes(ctx, 0, event->sample, len) == 0)
		event->sample_len = len;
	bpf_ringbuf_submit(event,
			   bpf_ringbuf_query(&crs_events, BPF_RB_AVAIL_DATA) >= EVENT_WAKEUP_BYTES
				   ? BPF_RB_FORCE_WAKEUP
				   : BPF_RB_NO_WAKEUP);
	return 1;
}

/* Reports a packet dropped for `reason`, counted on endpoint `endpoint_id`. */
__attribute__((noinline)) int crs_drop_event(struct __sk_buff *ctx, __u32 endpoint_id, __u32 reason,
					     __u32 dir)
{
	struct event_args event = {
		.type = EVENT_DROP,
		.reason = (__u8)reason,
		.dir = (__u8)dir,
		.endpoint_id = endpoint_id,
	};

	return crs_event(ctx, &event);
}

/* Reports a packet of a traced endpoint at `point` (TRACE_*), with the endpoint's identity. */
__attribute__((noinline)) int crs_trace_event(struct __sk_buff *ctx, __u32 endpoint_id,
					      __u32 identity, __u32 point)
{
	struct event_args event = {
		.type = EVENT_TRACE,
		.dir = point == TRACE_FROM_ENDPOINT ? METRIC_EGRESS : METRIC_INGRESS,
		.point = (__u8)point,
		.endpoint_id = endpoint_id,
	};

	if (point == TRACE_FROM_ENDPOINT)
		event.src_identity = identity;
	else
		event.dst_identity = identity;
	return crs_event(ctx, &event);
}

#endif /* CRS_EVENTS_H */
