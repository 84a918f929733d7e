//! Port ranges as prefix blocks: the minimal set of `(port, prefix)` blocks of the policy map's
//! LPM key that covers exactly a range, and containment between blocks.
//!
//! A block `(port, prefix)` holds the `2^(16 - prefix)` ports whose first `prefix` bits equal
//! those of `port`; its `port` is always aligned (the remaining bits are zero).

/// The bits of a 16-bit port a prefix of `prefix` bits keeps.
pub fn mask(prefix: u8) -> u16 {
    match prefix {
        0 => 0,
        p if p >= 16 => u16::MAX,
        p => u16::MAX << (16 - p),
    }
}

/// Whether `port` lies in the block `(block, prefix)`.
pub fn block_holds(block: u16, prefix: u8, port: u16) -> bool {
    (port ^ block) & mask(prefix) == 0
}

/// Whether the block `outer` contains the block `inner` (both `(port, prefix)`).
pub fn block_contains(outer: (u16, u8), inner: (u16, u8)) -> bool {
    outer.1 <= inner.1 && block_holds(outer.0, outer.1, inner.0)
}

/// The first and last port of a block.
pub fn block_range(port: u16, prefix: u8) -> (u16, u16) {
    let first = port & mask(prefix);
    (first, first | !mask(prefix))
}

/// The minimal list of aligned blocks covering exactly `first..=last`, in ascending order;
/// empty when `first > last`.
pub fn range_blocks(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest aligned block starting at `lo` that does not pass `hi`.
        let mut size: u32 = if lo == 0 { 1 << 16 } else { lo & lo.wrapping_neg() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let prefix = 16 - size.trailing_zeros();
        // `lo` < 2^16 and `prefix` <= 16 here.
        blocks.push((lo as u16, prefix as u8));
        lo += size;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `blocks` covers exactly `first..=last`, in order, without overlap, aligned,
    /// and minimally (no two neighbours could merge into their parent block).
    fn check_cover(first: u16, last: u16) {
        let blocks = range_blocks(first, last);
        let mut next = u32::from(first);
        for &(port, prefix) in &blocks {
            assert!(prefix <= 16);
            assert_eq!(port & !mask(prefix), 0, "{port}/{prefix} is not aligned");
            let (lo, hi) = block_range(port, prefix);
            assert_eq!(u32::from(lo), next, "gap or overlap before {port}/{prefix} in {first}-{last}");
            next = u32::from(hi) + 1;
        }
        assert_eq!(next, u32::from(last) + 1, "{first}-{last} not covered to its end");
        for pair in blocks.windows(2) {
            let ((a, pa), (b, pb)) = (pair[0], pair[1]);
            let mergeable = pa == pb && pa > 0 && block_contains((a & mask(pa - 1), pa - 1), (b, pb));
            assert!(!mergeable, "{a}/{pa} and {b}/{pb} could merge in {first}-{last}");
        }
    }

    #[test]
    fn known_ranges() {
        assert_eq!(range_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(range_blocks(1, 65535).len(), 16);
        assert_eq!(range_blocks(0, 0), vec![(0, 16)]);
        assert_eq!(range_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(range_blocks(65535, 65535), vec![(65535, 16)]);
        assert_eq!(range_blocks(1024, 2047), vec![(1024, 6)]);
        assert_eq!(range_blocks(80, 83), vec![(80, 14)]);
        assert_eq!(
            range_blocks(80, 444),
            vec![(80, 12), (96, 11), (128, 9), (256, 9), (384, 11), (416, 12), (432, 13), (440, 14), (444, 16)]
        );
        assert!(range_blocks(10, 9).is_empty());
    }

    #[test]
    fn every_cover_is_exact_and_minimal() {
        for (first, last) in
            [(0, 0), (0, 1), (1, 1), (0, 65535), (1, 65535), (0, 65534), (65535, 65535), (32767, 32768)]
        {
            check_cover(first, last);
        }
        // A fixed-seed sweep over arbitrary ranges.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let a = (state & 0xffff) as u16;
            let b = ((state >> 16) & 0xffff) as u16;
            let width = ((state >> 32) & 0xff) as u16;
            check_cover(a.min(b), a.max(b));
            check_cover(a, a.saturating_add(width));
        }
    }

    #[test]
    fn containment() {
        assert!(block_contains((0, 0), (443, 16)));
        assert!(block_contains((1024, 6), (1500, 16)));
        assert!(!block_contains((1024, 6), (0, 0)));
        assert!(!block_contains((80, 16), (81, 16)));
        assert!(block_holds(80, 14, 83) && !block_holds(80, 14, 84));
        assert_eq!(block_range(80, 14), (80, 83));
        assert_eq!(block_range(0, 0), (0, 65535));
    }
}
