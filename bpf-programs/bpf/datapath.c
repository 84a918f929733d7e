/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The whole datapath as one object (docs/datapath.md): the endpoint programs, the
 * egress-interface programs and the socket programs share their maps and subprograms.
 */
#include "endpoint.c"
#include "world.c"
#include "sock.c"

/*
 * The programs are offered under GPL-2.0 too (see the SPDX line), which the kernel requires of
 * programs that call bpf_fib_lookup and bpf_redirect_neigh.
 */
char __license[] SEC("license") = "GPL";
