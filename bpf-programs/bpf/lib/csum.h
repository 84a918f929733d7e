/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/* Internet checksum helpers (RFC 1071, incremental update per RFC 1624). */
#ifndef CRS_CSUM_H
#define CRS_CSUM_H

#include "common.h"

/* Folds a 32-bit one's complement sum to 16 bits and complements it. */
static __always_inline __sum16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* Updates *sum for a 16-bit word of the covered data changing from `from` to `to`. */
static __always_inline void csum_replace2(__sum16 *sum, __u16 from, __u16 to)
{
	__u32 acc = (__u16) ~*sum;

	acc += (__u16)~from;
	acc += to;
	*sum = csum_fold(acc);
}

#endif /* CRS_CSUM_H */
