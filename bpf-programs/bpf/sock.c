/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The host's own connections to published ports (docs/datapath.md, "Published ports"): socket
 * programs on the root cgroup turn a connect() or sendmsg() from the host's network namespace
 * to a published address and port — 127.0.0.1, ::1 or any address of the host — into one to
 * the endpoint's address and port before a packet exists, and getpeername() and recvmsg()
 * back, as Cilium's socket load balancer does. Sockets of other namespaces (containers) are
 * left alone: their packets meet the endpoint programs.
 */

#define SOCK_REV_MAX_ENTRIES 65536

/* What a socket was translated from, to turn the endpoint back into it for the application. */
struct sock_rev {
	__u8 published[16]; /* the address the application asked for */
	__u8 target[16];    /* the endpoint's address it reached */
	__be16 published_port;
	__be16 target_port;
	__u8 family;
	__u8 pad[3];
};

_Static_assert(sizeof(struct sock_rev) == 40, "sock_rev layout (abi::SockRev)");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* socket cookie */
	__type(value, struct sock_rev);
	__uint(max_entries, SOCK_REV_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} crs_sock_rev SEC(".maps");

/* Whether the socket belongs to the host's network namespace. */
static __always_inline bool sock_in_host_netns(struct bpf_sock_addr *ctx)
{
	__u64 host = config_host_netns();

	return host && bpf_get_netns_cookie(ctx) == host;
}

/* The address of a socket address program as 16 bytes (IPv4 in the first 4). */
static __always_inline void sock_user_addr(const struct bpf_sock_addr *ctx, __u8 family, __u8 *addr)
{
	__u32 words[4] = {};

	if (family == IP_FAMILY_V4) {
		words[0] = ctx->user_ip4;
	} else {
		words[0] = ctx->user_ip6[0];
		words[1] = ctx->user_ip6[1];
		words[2] = ctx->user_ip6[2];
		words[3] = ctx->user_ip6[3];
	}
	__builtin_memcpy(addr, words, 16);
}

static __always_inline void sock_set_user_addr(struct bpf_sock_addr *ctx, __u8 family,
					       const __u8 *addr, __be16 port)
{
	__u32 words[4];

	__builtin_memcpy(words, addr, 16);
	if (family == IP_FAMILY_V4) {
		ctx->user_ip4 = words[0];
	} else {
		ctx->user_ip6[0] = words[0];
		ctx->user_ip6[1] = words[1];
		ctx->user_ip6[2] = words[2];
		ctx->user_ip6[3] = words[3];
	}
	ctx->user_port = port;
}

/* Whether an address is the host's own: loopback, or identity host in the ipcache. */
static __always_inline bool sock_host_addr(__u8 family, const __u8 *addr)
{
	static const __u8 loopback6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

	if (family == IP_FAMILY_V4 ? addr[0] == 127 : addr_equal(addr, loopback6))
		return true;
	return ipcache_identity(family, addr) == IDENTITY_HOST;
}

/* Translates the destination of a connect() or sendmsg() to a published port. */
static __always_inline void sock_translate(struct bpf_sock_addr *ctx, __u8 family)
{
	const struct port_target *target;
	struct sock_rev rev = {};
	__u8 addr[16];
	__be16 port = (__be16)ctx->user_port;
	__u64 cookie;

	if ((ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP) ||
	    !sock_in_host_netns(ctx))
		return;
	sock_user_addr(ctx, family, addr);
	target = ports_lookup(family, ctx->protocol, port, addr, sock_host_addr(family, addr));
	if (!target)
		return;
	__builtin_memcpy(rev.published, addr, 16);
	__builtin_memcpy(rev.target, target->addr, 16);
	rev.published_port = port;
	rev.target_port = target->port;
	rev.family = family;
	sock_set_user_addr(ctx, family, target->addr, target->port);
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&crs_sock_rev, &cookie, &rev, BPF_ANY);
}

/* Shows the application the published address it asked for, not the endpoint behind it. */
static __always_inline void sock_untranslate(struct bpf_sock_addr *ctx, __u8 family)
{
	const struct sock_rev *rev;
	__u8 addr[16];
	__u64 cookie = bpf_get_socket_cookie(ctx);

	rev = bpf_map_lookup_elem(&crs_sock_rev, &cookie);
	if (!rev || rev->family != family)
		return;
	sock_user_addr(ctx, family, addr);
	if (!addr_equal(addr, rev->target) || (__be16)ctx->user_port != rev->target_port)
		return;
	__builtin_memcpy(addr, rev->published, 16);
	sock_set_user_addr(ctx, family, addr, rev->published_port);
}

SEC("cgroup/connect4")
int crs_connect4(struct bpf_sock_addr *ctx)
{
	sock_translate(ctx, IP_FAMILY_V4);
	return 1;
}

SEC("cgroup/connect6")
int crs_connect6(struct bpf_sock_addr *ctx)
{
	sock_translate(ctx, IP_FAMILY_V6);
	return 1;
}

SEC("cgroup/sendmsg4")
int crs_sendmsg4(struct bpf_sock_addr *ctx)
{
	sock_translate(ctx, IP_FAMILY_V4);
	return 1;
}

SEC("cgroup/sendmsg6")
int crs_sendmsg6(struct bpf_sock_addr *ctx)
{
	sock_translate(ctx, IP_FAMILY_V6);
	return 1;
}

SEC("cgroup/recvmsg4")
int crs_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock_untranslate(ctx, IP_FAMILY_V4);
	return 1;
}

SEC("cgroup/recvmsg6")
int crs_recvmsg6(struct bpf_sock_addr *ctx)
{
	sock_untranslate(ctx, IP_FAMILY_V6);
	return 1;
}

SEC("cgroup/getpeername4")
int crs_getpeername4(struct bpf_sock_addr *ctx)
{
	sock_untranslate(ctx, IP_FAMILY_V4);
	return 1;
}

SEC("cgroup/getpeername6")
int crs_getpeername6(struct bpf_sock_addr *ctx)
{
	sock_untranslate(ctx, IP_FAMILY_V6);
	return 1;
}
