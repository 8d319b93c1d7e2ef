//! SIMD versions of the byte and bit transposes of the shuffle and bitshuffle filters
//! (FORMAT.md 7): encoding and decoding a block spent most of their time in the scalar ones.
//! The byte shuffles and the bitshuffle are SSE2, 16 units (or groups of eight) at a time;
//! undoing the bitshuffle runs 16 groups in each 128-bit lane, so the same code does SSE2 (one
//! lane, every x86_64 CPU) and AVX2 (two lanes, when the CPU has it: every step stays within a
//! lane, so the upper one just does the next 16 groups). Elsewhere the scalar code in
//! `compress` does it all. Each function does a prefix of the units (or groups of eight units)
//! and returns how many, leaving the rest to the scalar code.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Undoes the byte shuffle of `U`-byte units: unit `i` byte `j` comes from `src[j * n + i]`
/// (n units). Does whole groups of 16 units; returns how many units it did.
#[cfg(target_arch = "x86_64")]
pub fn unshuffle<const U: usize>(src: &[u8], out: &mut [u8]) -> usize {
    let n = src.len() / U;
    let done = n / 16 * 16;
    assert!(out.len() >= n * U);
    for i in (0..done).step_by(16) {
        // SAFETY: plane j's 16 bytes at i lie in src (i + 16 <= n), and units i..i + 16 in
        // out (checked above); SSE2 is always there on x86_64.
        unsafe {
            let v: [__m128i; U] =
                std::array::from_fn(|j| __m128i::load(src.as_ptr().add(j * n + i)));
            interleave::<_, U>(&v, out.as_mut_ptr().add(i * U), 0);
        }
    }
    done
}

/// Undoes the bitshuffle of `U`-byte units (`compress::bitshuffle` says the layout): `src`
/// holds 8U planes of `plane` bytes. Does groups 0..16k of eight units (k as large as fits);
/// returns how many groups it did.
#[cfg(target_arch = "x86_64")]
pub fn unbitshuffle<const U: usize>(src: &[u8], out: &mut [u8], plane: usize) -> usize {
    assert!(src.len() >= 8 * U * plane && out.len() >= 8 * U * plane);
    // SAFETY: both hold the 8U planes' units (checked above); AVX2 only when the CPU has it.
    unsafe {
        let from = match is_x86_feature_detected!("avx2") {
            true => unbitshuffle_avx2::<U>(src, out, plane),
            false => 0,
        };
        unbitshuffle_lanes::<__m128i, U>(src, out, plane, from)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unbitshuffle_avx2<const U: usize>(src: &[u8], out: &mut [u8], plane: usize) -> usize {
    unbitshuffle_lanes::<__m256i, U>(src, out, plane, 0)
}

/// Groups `from..` of `unbitshuffle`, `16 * V::LANES` at a time while they last; returns
/// where it stopped. The caller checked that `src` and `out` hold `plane`'s groups.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unbitshuffle_lanes<V: Vector, const U: usize>(
    src: &[u8],
    out: &mut [u8],
    plane: usize,
    from: usize,
) -> usize {
    let step = 16 * V::LANES;
    let done = from + (plane - from) / step * step;
    for g0 in (from..done).step_by(step) {
        // t[k][j]: byte j of units 8 * g0 + 16k .. + 16 (and 128 units on in a second lane).
        let mut t = [[V::zero(); U]; 8];
        for j in 0..U {
            let x: [V; 8] =
                std::array::from_fn(|b| V::load(src.as_ptr().add((8 * j + b) * plane + g0)));
            for (tk, c) in t.iter_mut().zip(gather_groups(x)) {
                tk[j] = transpose8x2(c);
            }
        }
        let dst = out.as_mut_ptr().add(g0 * 8 * U);
        for (k, v) in t.iter().enumerate() {
            interleave::<V, U>(v, dst.add(16 * k * U), 128 * U);
        }
    }
    done
}

/// The byte shuffle of `U`-byte units: byte `j` of unit `i` goes to `out[j * n + i]` (n units).
/// Does whole groups of 16 units; returns how many units it did.
#[cfg(target_arch = "x86_64")]
pub fn shuffle<const U: usize>(src: &[u8], out: &mut [u8]) -> usize {
    let n = src.len() / U;
    let done = n / 16 * 16;
    assert!(out.len() >= n * U);
    for i in (0..done).step_by(16) {
        // SAFETY: units i..i + 16 lie in src, and plane j's bytes i..i + 16 in out (i + 16 <= n,
        // checked above); SSE2 is always there on x86_64.
        unsafe {
            let w: [__m128i; U] =
                std::array::from_fn(|m| __m128i::load(src.as_ptr().add(i * U + 16 * m)));
            for (j, v) in deinterleave::<_, U>(w).into_iter().enumerate() {
                v.store(out.as_mut_ptr().add(j * n + i));
            }
        }
    }
    done
}

/// The bitshuffle of `U`-byte units (`compress::bitshuffle` says the layout) into 8U planes of
/// `plane` bytes. Does groups 0..16k of eight units whose units all lie in `src`; returns how
/// many groups it did. (SSE2 only: the AVX2 form of these steps measured no faster, 3.8-5.6
/// GB/s against 4.3-5.4 on 64 KiB blocks, `benchmarks/transpose`.)
#[cfg(target_arch = "x86_64")]
pub fn bitshuffle<const U: usize>(src: &[u8], out: &mut [u8], plane: usize) -> usize {
    let done = src.len() / U / 128 * 16;
    assert!(out.len() >= 8 * U * plane && plane >= done);
    for g0 in (0..done).step_by(16) {
        // SAFETY: the 128 units of groups g0..g0 + 16 lie in src, and planes hold `plane` >=
        // g0 + 16 bytes each (both checked above); SSE2 is always there on x86_64.
        unsafe {
            // t[j][k]: planes 8j..8j + 8 of groups g0 + 2k and g0 + 2k + 1, a u64 lane each.
            let mut t = [[_mm_setzero_si128(); 8]; U];
            for k in 0..8 {
                let at = src.as_ptr().add((8 * g0 + 16 * k) * U);
                let w: [__m128i; U] = std::array::from_fn(|m| __m128i::load(at.add(16 * m)));
                for (tj, v) in t.iter_mut().zip(deinterleave::<_, U>(w)) {
                    tj[k] = transpose8x2(v);
                }
            }
            for (j, tj) in t.iter().enumerate() {
                let x = stages(*tj, [2, 1, 0, 2]);
                for b in 0..8 {
                    // After the stages, plane b sits at index b0 b2 b1 (binary).
                    let at = (b & 1) << 2 | (b >> 2 & 1) << 1 | (b >> 1 & 1);
                    x[at].store(out.as_mut_ptr().add((8 * j + b) * plane + g0));
                }
            }
        }
    }
    done
}

/// A vector of `LANES` 128-bit lanes, with the in-lane steps the transposes are made of.
#[cfg(target_arch = "x86_64")]
trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    /// `16 * LANES` bytes at `p`.
    unsafe fn load(p: *const u8) -> Self;
    unsafe fn store(self, p: *mut u8);
    /// Lane l to the 16 bytes at `p + l * stride`.
    unsafe fn store_lanes(self, p: *mut u8, stride: usize);
    unsafe fn splat64(x: i64) -> Self;
    unsafe fn and(self, o: Self) -> Self;
    unsafe fn xor(self, o: Self) -> Self;
    unsafe fn shr64<const N: i32>(self) -> Self;
    unsafe fn shl64<const N: i32>(self) -> Self;
    unsafe fn lo8(self, o: Self) -> Self;
    unsafe fn hi8(self, o: Self) -> Self;
    unsafe fn lo16(self, o: Self) -> Self;
    unsafe fn hi16(self, o: Self) -> Self;
    unsafe fn lo32(self, o: Self) -> Self;
    unsafe fn hi32(self, o: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
impl Vector for __m128i {
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm_setzero_si128()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        _mm_loadu_si128(p as *const __m128i)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        _mm_storeu_si128(p as *mut __m128i, self)
    }
    #[inline(always)]
    unsafe fn store_lanes(self, p: *mut u8, _: usize) {
        self.store(p)
    }
    #[inline(always)]
    unsafe fn splat64(x: i64) -> Self {
        _mm_set1_epi64x(x)
    }
    #[inline(always)]
    unsafe fn and(self, o: Self) -> Self {
        _mm_and_si128(self, o)
    }
    #[inline(always)]
    unsafe fn xor(self, o: Self) -> Self {
        _mm_xor_si128(self, o)
    }
    #[inline(always)]
    unsafe fn shr64<const N: i32>(self) -> Self {
        _mm_srli_epi64::<N>(self)
    }
    #[inline(always)]
    unsafe fn shl64<const N: i32>(self) -> Self {
        _mm_slli_epi64::<N>(self)
    }
    #[inline(always)]
    unsafe fn lo8(self, o: Self) -> Self {
        _mm_unpacklo_epi8(self, o)
    }
    #[inline(always)]
    unsafe fn hi8(self, o: Self) -> Self {
        _mm_unpackhi_epi8(self, o)
    }
    #[inline(always)]
    unsafe fn lo16(self, o: Self) -> Self {
        _mm_unpacklo_epi16(self, o)
    }
    #[inline(always)]
    unsafe fn hi16(self, o: Self) -> Self {
        _mm_unpackhi_epi16(self, o)
    }
    #[inline(always)]
    unsafe fn lo32(self, o: Self) -> Self {
        _mm_unpacklo_epi32(self, o)
    }
    #[inline(always)]
    unsafe fn hi32(self, o: Self) -> Self {
        _mm_unpackhi_epi32(self, o)
    }
}

/// Used only inside `#[target_feature(enable = "avx2")]` functions, after checking the CPU.
#[cfg(target_arch = "x86_64")]
impl Vector for __m256i {
    const LANES: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut u8) {
        _mm256_storeu_si256(p as *mut __m256i, self)
    }
    #[inline(always)]
    unsafe fn store_lanes(self, p: *mut u8, stride: usize) {
        _mm256_storeu2_m128i(p.add(stride) as *mut __m128i, p as *mut __m128i, self)
    }
    #[inline(always)]
    unsafe fn splat64(x: i64) -> Self {
        _mm256_set1_epi64x(x)
    }
    #[inline(always)]
    unsafe fn and(self, o: Self) -> Self {
        _mm256_and_si256(self, o)
    }
    #[inline(always)]
    unsafe fn xor(self, o: Self) -> Self {
        _mm256_xor_si256(self, o)
    }
    #[inline(always)]
    unsafe fn shr64<const N: i32>(self) -> Self {
        _mm256_srli_epi64::<N>(self)
    }
    #[inline(always)]
    unsafe fn shl64<const N: i32>(self) -> Self {
        _mm256_slli_epi64::<N>(self)
    }
    #[inline(always)]
    unsafe fn lo8(self, o: Self) -> Self {
        _mm256_unpacklo_epi8(self, o)
    }
    #[inline(always)]
    unsafe fn hi8(self, o: Self) -> Self {
        _mm256_unpackhi_epi8(self, o)
    }
    #[inline(always)]
    unsafe fn lo16(self, o: Self) -> Self {
        _mm256_unpacklo_epi16(self, o)
    }
    #[inline(always)]
    unsafe fn hi16(self, o: Self) -> Self {
        _mm256_unpackhi_epi16(self, o)
    }
    #[inline(always)]
    unsafe fn lo32(self, o: Self) -> Self {
        _mm256_unpacklo_epi32(self, o)
    }
    #[inline(always)]
    unsafe fn hi32(self, o: Self) -> Self {
        _mm256_unpackhi_epi32(self, o)
    }
}

/// 16 units of `U` bytes, `16U` bytes in `w` -> `U` vectors, byte j of every unit in the j-th
/// (in each lane).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn deinterleave<V: Vector, const U: usize>(w: [V; U]) -> [V; U] {
    match U {
        1 => w,
        2 => stages(w, [0, 0, 0, 0]),
        4 => stages(w, [1, 0, 1, 0]),
        _ => {
            let x = stages(w, [2, 1, 0, 2]);
            std::array::from_fn(|j| x[(j & 1) << 2 | (j >> 2 & 1) << 1 | (j >> 1 & 1)])
        }
    }
}

/// Four rounds of byte unpacks. Seen as bits of (vector index, byte position), the round on
/// index bit `s` pairs the vectors that differ in it: the byte position shifts up by one and
/// takes bit s at the bottom, and bit s takes the position's top bit. So the four rounds carry
/// the index bits named, in turn, to the bottom of the byte position.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stages<V: Vector, const N: usize>(mut v: [V; N], bits: [usize; 4]) -> [V; N] {
    for s in bits {
        let prev = v;
        for i in (0..N).filter(|i| i & (1 << s) == 0) {
            let j = i | 1 << s;
            v[i] = prev[i].lo8(prev[j]);
            v[j] = prev[i].hi8(prev[j]);
        }
    }
    v
}

/// Bytes 16 groups of eight planes -> eight vectors of two groups each: lane `l` of result `k`
/// is a u64 whose byte `b` is plane b's byte of group 2k + l.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gather_groups<V: Vector>(x: [V; 8]) -> [V; 8] {
    let (a01l, a01h) = (x[0].lo8(x[1]), x[0].hi8(x[1]));
    let (a23l, a23h) = (x[2].lo8(x[3]), x[2].hi8(x[3]));
    let (a45l, a45h) = (x[4].lo8(x[5]), x[4].hi8(x[5]));
    let (a67l, a67h) = (x[6].lo8(x[7]), x[6].hi8(x[7]));
    // Four planes of groups 0-3, 4-7, 8-11, 12-15.
    let b0 = [
        a01l.lo16(a23l),
        a01l.hi16(a23l),
        a01h.lo16(a23h),
        a01h.hi16(a23h),
    ];
    let b4 = [
        a45l.lo16(a67l),
        a45l.hi16(a67l),
        a45h.lo16(a67h),
        a45h.hi16(a67h),
    ];
    std::array::from_fn(|k| match k % 2 {
        0 => b0[k / 2].lo32(b4[k / 2]),
        _ => b0[k / 2].hi32(b4[k / 2]),
    })
}

/// `compress::transpose8` on every u64 lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8x2<V: Vector>(mut x: V) -> V {
    let t = x.xor(x.shr64::<7>()).and(V::splat64(0x00AA_00AA_00AA_00AA));
    x = x.xor(t.xor(t.shl64::<7>()));
    let t = x
        .xor(x.shr64::<14>())
        .and(V::splat64(0x0000_CCCC_0000_CCCC));
    x = x.xor(t.xor(t.shl64::<14>()));
    let t = x
        .xor(x.shr64::<28>())
        .and(V::splat64(0x0000_0000_F0F0_F0F0));
    x.xor(t.xor(t.shl64::<28>()))
}

/// Writes 16 units of `U` bytes to `dst`, byte j of unit i from byte i of `v[j]`; lane l's
/// units to `dst + l * stride`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn interleave<V: Vector, const U: usize>(v: &[V; U], dst: *mut u8, stride: usize) {
    let store = |i: usize, x: V| x.store_lanes(dst.add(16 * i), stride);
    match U {
        1 => store(0, v[0]),
        2 => {
            store(0, v[0].lo8(v[1]));
            store(1, v[0].hi8(v[1]));
        }
        4 => {
            let (a, b) = (v[0].lo8(v[1]), v[0].hi8(v[1])); // units 0-7, 8-15: bytes 0, 1
            let (c, d) = (v[2].lo8(v[3]), v[2].hi8(v[3])); // bytes 2, 3
            store(0, a.lo16(c));
            store(1, a.hi16(c));
            store(2, b.lo16(d));
            store(3, b.hi16(d));
        }
        _ => {
            // Bytes 0-3 and 4-7 of units 0-3, 4-7, 8-11, 12-15, then two units a vector.
            let quads = |v: &[V]| {
                let (a, b) = (v[0].lo8(v[1]), v[0].hi8(v[1]));
                let (c, d) = (v[2].lo8(v[3]), v[2].hi8(v[3]));
                [a.lo16(c), a.hi16(c), b.lo16(d), b.hi16(d)]
            };
            let (e, f) = (quads(&v[..4]), quads(&v[4..]));
            for q in 0..4 {
                store(2 * q, e[q].lo32(f[q]));
                store(2 * q + 1, e[q].hi32(f[q]));
            }
        }
    }
}

/// Tests' noise: a xorshift generator from `seed`, the same numbers every run.
#[cfg(test)]
pub fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Undoing a bitshuffle with AVX2 writes what SSE2 does (compress's tests hold whichever
    /// the CPU runs to the scalar code), around the 32-group steps.
    #[test]
    fn avx2_matches_sse2() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let bytes: Vec<u8> = (0..64 * 1024).map(|_| next() as u8).collect();
        fn both<const U: usize>(bytes: &[u8]) {
            for groups in [0, 16, 31, 32, 33, 48, 64, 100, 1000] {
                let planes = &bytes[..8 * U * groups];
                let (mut wide, mut narrow) = (vec![0u8; planes.len()], vec![0u8; planes.len()]);
                // SAFETY: planes and both outputs hold `groups` groups of eight units; the CPU
                // has AVX2 (checked above).
                unsafe {
                    let from = unbitshuffle_avx2::<U>(planes, &mut wide, groups);
                    assert_eq!(from, groups / 32 * 32);
                    unbitshuffle_lanes::<__m128i, U>(planes, &mut wide, groups, from);
                    unbitshuffle_lanes::<__m128i, U>(planes, &mut narrow, groups, 0);
                }
                assert_eq!(wide, narrow, "unit {U}, {groups} groups");
            }
        }
        both::<1>(&bytes);
        both::<2>(&bytes);
        both::<4>(&bytes);
        both::<8>(&bytes);
    }
}
