//! SSE2 versions of the byte and bit transposes of the shuffle and bitshuffle filters
//! (FORMAT.md 7), 16 or 128 units at a time: encoding and decoding a block spent most of their
//! time in the scalar ones. SSE2 is part of every x86_64 CPU, so no detection is needed;
//! elsewhere the scalar code in `compress` does it all. Each function does a prefix of the
//! units (or groups of eight units) and returns how many, leaving the rest to the scalar code.

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
            let v: [__m128i; U] = std::array::from_fn(|j| load(src, j * n + i));
            interleave::<U>(&v, out.as_mut_ptr().add(i * U));
        }
    }
    done
}

/// Undoes the bitshuffle of `U`-byte units (`compress::bitshuffle` says the layout): `src`
/// holds 8U planes of `plane` bytes. Does groups 0..16k of eight units (k as large as fits);
/// returns how many groups it did.
#[cfg(target_arch = "x86_64")]
pub fn unbitshuffle<const U: usize>(src: &[u8], out: &mut [u8], plane: usize) -> usize {
    let done = plane / 16 * 16;
    assert!(src.len() >= 8 * U * plane && out.len() >= 8 * U * plane);
    for g0 in (0..done).step_by(16) {
        // SAFETY: planes hold `plane` >= g0 + 16 bytes each and out the 128 units of groups
        // g0..g0 + 16 (both checked above); SSE2 is always there on x86_64.
        unsafe {
            // t[k][j]: byte j of units 8 * g0 + 16k .. + 16.
            let mut t = [[_mm_setzero_si128(); U]; 8];
            for j in 0..U {
                let x: [__m128i; 8] = std::array::from_fn(|b| load(src, (8 * j + b) * plane + g0));
                for (tk, c) in t.iter_mut().zip(gather_groups(x)) {
                    tk[j] = transpose8x2(c);
                }
            }
            let dst = out.as_mut_ptr().add(g0 * 8 * U);
            for (k, v) in t.iter().enumerate() {
                interleave::<U>(v, dst.add(16 * k * U));
            }
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
            let w: [__m128i; U] = std::array::from_fn(|m| load(src, i * U + 16 * m));
            for (j, v) in deinterleave::<U>(w).into_iter().enumerate() {
                store(out, j * n + i, v);
            }
        }
    }
    done
}

/// The bitshuffle of `U`-byte units (`compress::bitshuffle` says the layout) into 8U planes of
/// `plane` bytes. Does groups 0..16k of eight units whose units all lie in `src`; returns how
/// many groups it did.
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
                let at = (8 * g0 + 16 * k) * U;
                let w: [__m128i; U] = std::array::from_fn(|m| load(src, at + 16 * m));
                for (tj, v) in t.iter_mut().zip(deinterleave::<U>(w)) {
                    tj[k] = transpose8x2(v);
                }
            }
            for (j, tj) in t.iter().enumerate() {
                let x = stages(*tj, [2, 1, 0, 2]);
                for b in 0..8 {
                    // After the stages, plane b sits at index b0 b2 b1 (binary).
                    let at = (b & 1) << 2 | (b >> 2 & 1) << 1 | (b >> 1 & 1);
                    store(out, (8 * j + b) * plane + g0, x[at]);
                }
            }
        }
    }
    done
}

/// 16 units of `U` bytes, `16U` bytes in `w` -> `U` vectors, byte j of every unit in the j-th.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn deinterleave<const U: usize>(w: [__m128i; U]) -> [__m128i; U] {
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
unsafe fn stages<const N: usize>(mut v: [__m128i; N], bits: [usize; 4]) -> [__m128i; N] {
    for s in bits {
        let prev = v;
        for i in (0..N).filter(|i| i & (1 << s) == 0) {
            let j = i | 1 << s;
            v[i] = _mm_unpacklo_epi8(prev[i], prev[j]);
            v[j] = _mm_unpackhi_epi8(prev[i], prev[j]);
        }
    }
    v
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store(out: &mut [u8], at: usize, v: __m128i) {
    debug_assert!(at + 16 <= out.len());
    _mm_storeu_si128(out.as_mut_ptr().add(at) as *mut __m128i, v);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load(src: &[u8], at: usize) -> __m128i {
    debug_assert!(at + 16 <= src.len());
    _mm_loadu_si128(src.as_ptr().add(at) as *const __m128i)
}

/// Bytes 16 groups of eight planes -> eight vectors of two groups each: lane `l` of result `k`
/// is a u64 whose byte `b` is plane b's byte of group 2k + l.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gather_groups(x: [__m128i; 8]) -> [__m128i; 8] {
    let lo = |a, b| _mm_unpacklo_epi8(a, b);
    let hi = |a, b| _mm_unpackhi_epi8(a, b);
    let (a01l, a01h) = (lo(x[0], x[1]), hi(x[0], x[1]));
    let (a23l, a23h) = (lo(x[2], x[3]), hi(x[2], x[3]));
    let (a45l, a45h) = (lo(x[4], x[5]), hi(x[4], x[5]));
    let (a67l, a67h) = (lo(x[6], x[7]), hi(x[6], x[7]));
    // Four planes of groups 0-3, 4-7, 8-11, 12-15.
    let b0 = [
        _mm_unpacklo_epi16(a01l, a23l),
        _mm_unpackhi_epi16(a01l, a23l),
        _mm_unpacklo_epi16(a01h, a23h),
        _mm_unpackhi_epi16(a01h, a23h),
    ];
    let b4 = [
        _mm_unpacklo_epi16(a45l, a67l),
        _mm_unpackhi_epi16(a45l, a67l),
        _mm_unpacklo_epi16(a45h, a67h),
        _mm_unpackhi_epi16(a45h, a67h),
    ];
    std::array::from_fn(|k| match k % 2 {
        0 => _mm_unpacklo_epi32(b0[k / 2], b4[k / 2]),
        _ => _mm_unpackhi_epi32(b0[k / 2], b4[k / 2]),
    })
}

/// `compress::transpose8` on both u64 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8x2(mut x: __m128i) -> __m128i {
    let t = _mm_and_si128(
        _mm_xor_si128(x, _mm_srli_epi64(x, 7)),
        _mm_set1_epi64x(0x00AA_00AA_00AA_00AA),
    );
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 7)));
    let t = _mm_and_si128(
        _mm_xor_si128(x, _mm_srli_epi64(x, 14)),
        _mm_set1_epi64x(0x0000_CCCC_0000_CCCC),
    );
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 14)));
    let t = _mm_and_si128(
        _mm_xor_si128(x, _mm_srli_epi64(x, 28)),
        _mm_set1_epi64x(0x0000_0000_F0F0_F0F0),
    );
    _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 28)))
}

/// Writes 16 units of `U` bytes to `dst`, byte j of unit i from byte i of `v[j]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn interleave<const U: usize>(v: &[__m128i; U], dst: *mut u8) {
    let store = |i: usize, x| _mm_storeu_si128(dst.add(16 * i) as *mut __m128i, x);
    let lo8 = |a, b| _mm_unpacklo_epi8(a, b);
    let hi8 = |a, b| _mm_unpackhi_epi8(a, b);
    match U {
        1 => store(0, v[0]),
        2 => {
            store(0, lo8(v[0], v[1]));
            store(1, hi8(v[0], v[1]));
        }
        4 => {
            let (a, b) = (lo8(v[0], v[1]), hi8(v[0], v[1])); // units 0-7, 8-15: bytes 0, 1
            let (c, d) = (lo8(v[2], v[3]), hi8(v[2], v[3])); // bytes 2, 3
            store(0, _mm_unpacklo_epi16(a, c));
            store(1, _mm_unpackhi_epi16(a, c));
            store(2, _mm_unpacklo_epi16(b, d));
            store(3, _mm_unpackhi_epi16(b, d));
        }
        _ => {
            // Bytes 0-3 and 4-7 of units 0-3, 4-7, 8-11, 12-15, then two units a vector.
            let quads = |v: &[__m128i]| {
                let (a, b) = (lo8(v[0], v[1]), hi8(v[0], v[1]));
                let (c, d) = (lo8(v[2], v[3]), hi8(v[2], v[3]));
                [
                    _mm_unpacklo_epi16(a, c),
                    _mm_unpackhi_epi16(a, c),
                    _mm_unpacklo_epi16(b, d),
                    _mm_unpackhi_epi16(b, d),
                ]
            };
            let (e, f) = (quads(&v[..4]), quads(&v[4..]));
            for q in 0..4 {
                store(2 * q, _mm_unpacklo_epi32(e[q], f[q]));
                store(2 * q + 1, _mm_unpackhi_epi32(e[q], f[q]));
            }
        }
    }
}
