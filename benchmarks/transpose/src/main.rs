//! numpack's byte shuffle and bitshuffle (SSE2; AVX2 to undo a bitshuffle, picked at run time;
//! rust/core/transpose.rs) against the byteshuffle crate (blosc's shuffle reimplemented in
//! Rust: SSE2, AVX2, AVX-512, picked at run time) and c-blosc2's shuffle and bitshuffle (its
//! SSE2, AVX2 and AVX-512 code, picked at run time), on 64 KiB blocks (numpack's default block)
//! that stay in cache, one thread. MB/s are medians of 15 rounds of 2,000 calls, each round
//! timing every implementation in a rotating order.

#[allow(dead_code)]
#[path = "../../../rust/core/transpose.rs"]
mod transpose;

use std::hint::black_box;
use std::time::Instant;

extern crate blosc2_src;

extern "C" {
    // c-blosc2's blosc/shuffle.h: dispatched at run time to its fastest code.
    fn shuffle(bytesoftype: i32, blocksize: i32, src: *const u8, dest: *mut u8);
    fn unshuffle(bytesoftype: i32, blocksize: i32, src: *const u8, dest: *mut u8);
    fn bitshuffle(bytesoftype: i32, blocksize: i32, src: *const u8, dest: *mut u8) -> i32;
    fn bitunshuffle(bytesoftype: i32, blocksize: i32, src: *const u8, dest: *mut u8, v: u8) -> i32;
}

const BLOCK: usize = 1 << 16;
const CALLS: usize = 2000;
const ROUNDS: usize = 15;

type Case<'a> = Box<dyn FnMut() + 'a>;

fn ours<const U: usize>(op: &str, src: &[u8], out: &mut [u8]) {
    let plane = src.len() / (8 * U);
    let done = match op {
        "shuffle" => transpose::shuffle::<U>(src, out) * U,
        "unshuffle" => transpose::unshuffle::<U>(src, out) * U,
        "bitshuffle" => transpose::bitshuffle::<U>(src, out, plane) * 8 * U,
        _ => transpose::unbitshuffle::<U>(src, out, plane) * 8 * U,
    };
    assert_eq!(done, src.len(), "a 64 KiB block is whole SIMD steps");
}

fn blosc(op: &str, unit: usize, src: &[u8], out: &mut [u8]) {
    let (u, n, s, d) = (
        unit as i32,
        src.len() as i32,
        src.as_ptr(),
        out.as_mut_ptr(),
    );
    // SAFETY: both buffers hold `n` bytes; c-blosc2 reads and writes no more.
    unsafe {
        match op {
            "shuffle" => shuffle(u, n, s, d),
            "unshuffle" => unshuffle(u, n, s, d),
            "bitshuffle" => assert!(bitshuffle(u, n, s, d) >= 0),
            _ => assert!(bitunshuffle(u, n, s, d, 4) >= 0),
        }
    }
}

fn run<const U: usize>(op: &'static str, raw: &[u8]) {
    // The input of the undoing ops is the doing op's output (numpack's and blosc2's agree, as
    // checked below).
    let mut src = raw.to_vec();
    if op.starts_with("un") {
        ours::<U>(op.strip_prefix("un").unwrap(), raw, &mut src);
    }
    // Outputs start 1 KiB + 64 bytes past a 4 KiB multiple from the input, as allocations
    // may not: stores 4 KiB apart from loads stall them (4K aliasing), which would time the
    // allocator's placement instead of the code.
    let mut bufs = vec![0u8; 4 * BLOCK];
    src = {
        let at = bufs.as_ptr() as usize % 4096;
        bufs[4096 - at..4096 - at + BLOCK].copy_from_slice(&src);
        bufs[4096 - at..4096 - at + BLOCK].to_vec()
    };
    let shifted = |v: &mut Vec<u8>| {
        let at = (v.as_ptr() as usize + 4096 - 1088 - src.as_ptr() as usize % 4096) % 4096;
        v.drain(..(4096 - at) % 4096);
        v.truncate(BLOCK);
    };
    let (mut a, mut b, mut c) = (
        vec![0u8; 2 * BLOCK],
        vec![0u8; 2 * BLOCK],
        vec![0u8; 2 * BLOCK],
    );
    for v in [&mut a, &mut b, &mut c] {
        shifted(v);
    }
    ours::<U>(op, &src, &mut a);
    blosc(op, U, &src, &mut b);
    let same_layout = a == b;
    // numpack, c-blosc2, then byteshuffle (byte shuffles only): the table's columns.
    let mut cases: Vec<Case> = vec![
        Box::new(|| ours::<U>(op, black_box(&src), black_box(&mut a))),
        Box::new(|| blosc(op, U, black_box(&src), black_box(&mut b))),
    ];
    if !op.contains("bit") {
        cases.push(Box::new(|| match op {
            "shuffle" => byteshuffle::shuffle_into(U, black_box(&src), black_box(&mut c)),
            _ => byteshuffle::unshuffle_into(U, black_box(&src), black_box(&mut c)),
        }));
    }
    let (k, mut times) = (cases.len(), vec![Vec::new(); cases.len()]);
    for r in 0..ROUNDS {
        for i in (0..k).map(|i| (i + r) % k) {
            let t = Instant::now();
            for _ in 0..CALLS {
                (cases[i])();
            }
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    let mbs: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            (CALLS * BLOCK) as f64 / t[ROUNDS / 2] / 1e6
        })
        .collect();
    let mut row = format!("| {op} | {U} | {:.0} |", mbs[0]);
    for m in &mbs[1..] {
        row += &format!(" {m:.0} ({:.2}x) |", m / mbs[0]);
    }
    if cases.len() == 2 {
        row += " |";
    }
    println!("{row} {} |", if same_layout { "yes" } else { "no" });
}

fn main() {
    let raw: Vec<u8> = (0..BLOCK as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!("MB/s on 64 KiB blocks, one thread (in brackets: over numpack's)\n");
    println!("| op | unit | numpack | c-blosc2 | byteshuffle | same bytes as c-blosc2 |");
    println!("|---|---|---|---|---|---|");
    for op in ["shuffle", "unshuffle", "bitshuffle", "unbitshuffle"] {
        run::<4>(op, &raw);
        run::<8>(op, &raw);
        run::<2>(op, &raw);
    }
}
