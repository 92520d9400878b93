//! Vector quantisation (f32 → f16 bits / i8 + scale) and the distance kernels that read quantised vectors.
//!
//! Kernels come in three builds: a portable one written in fixed-width chunks so LLVM vectorises
//! it where it can; on x86_64 an AVX2+FMA+F16C one chosen at run time; on wasm32 with simd128 and
//! relaxed-simd (the worker's build) a 128-bit one chosen at compile time, as wasm has no run-time
//! feature detection.
//! All three decode f16 exactly and sum 16 lanes in the same order, so they agree to rounding.

/// Lanes per chunk in the portable kernels: wide enough for two 256-bit registers of f32.
const LANES: usize = 16;

/// f16 bits of `x` (round to nearest even). Callers check the range: |x| > 65504 becomes infinity.
pub fn encode_f16(values: &[f32], out: &mut Vec<u16>) {
    out.extend(values.iter().map(|&x| half::f16::from_f32(x).to_bits()));
}

/// Signed-byte codes of `values` and the scale that maps them back (x ≈ scale · code).
pub fn encode_i8(values: &[f32], out: &mut Vec<i8>) -> f32 {
    let max_abs = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max_abs == 0.0 {
        out.extend(std::iter::repeat_n(0i8, values.len()));
        return 0.0;
    }
    let scale = max_abs / 127.0;
    out.extend(
        values
            .iter()
            .map(|&x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// 2^112 = 2^(127 - 15): rebiases an f16 exponent that sits in f32 position.
const F16_REBIAS: f32 = 5.192_297e33;
/// Sign, exponent and mantissa of an f16 that was shifted into f32 position (see below).
const F16_IN_F32_MASK: u32 = 0x8fff_e000;

/// Exact f16 → f32 for every finite half (normal and subnormal, ±0), branch-free so it
/// vectorises: put the half in the upper 16 bits, shift right arithmetically by 3 (exponent and
/// mantissa land in f32 position, the sign is copied into bit 31 and the three bits the mask
/// clears), then rebias the exponent by multiplying by 2^112 (exact, sign included). Infinity and
/// NaN would decode to finite values: the builder stores only finite halves. The simd128 kernels
/// do exactly this per lane.
#[inline(always)]
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    let shifted = ((u32::from(bits) << 16) as i32 >> 3) as u32;
    f32::from_bits(shifted & F16_IN_F32_MASK) * F16_REBIAS
}

// The kernels used when no run-time-detected ones apply.
#[cfg(not(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    target_feature = "relaxed-simd"
)))]
use portable as baseline;
#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    target_feature = "relaxed-simd"
))]
use simd128 as baseline;

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { avx2::dot_f32(a, b) };
    }
    baseline::dot_f32(a, b)
}

pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_f32(a, b) };
    }
    baseline::l2sq_f32(a, b)
}

/// Inner product of an f32 query with an f16 vector.
pub fn dot_f16(query: &[f32], bits: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::dot_f16(query, bits) };
    }
    baseline::dot_f16(query, bits)
}

/// Squared euclidean distance between an f32 query and an f16 vector.
pub fn l2sq_f16(query: &[f32], bits: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_f16(query, bits) };
    }
    baseline::l2sq_f16(query, bits)
}

/// Inner product of an f32 query with the codes of an i8 vector (multiply by the scale afterwards).
pub fn dot_i8(query: &[f32], codes: &[i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::dot_i8(query, codes) };
    }
    baseline::dot_i8(query, codes)
}

/// Squared euclidean distance between an f32 query and the i8 vector `scale · codes`.
pub fn l2sq_i8(query: &[f32], codes: &[i8], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_i8(query, codes, scale) };
    }
    baseline::l2sq_i8(query, codes, scale)
}

pub(crate) mod portable {
    use super::{f16_bits_to_f32, LANES};

    /// Sums `lane(q[i], v[i])` with LANES independent accumulators so the loop vectorises.
    #[inline(always)]
    fn reduce<T: Copy>(query: &[f32], vector: &[T], lane: impl Fn(f32, T) -> f32) -> f32 {
        debug_assert_eq!(query.len(), vector.len());
        let query_chunks = query.chunks_exact(LANES);
        let vector_chunks = vector.chunks_exact(LANES);
        let tail: f32 = query_chunks
            .remainder()
            .iter()
            .zip(vector_chunks.remainder())
            .map(|(&q, &v)| lane(q, v))
            .sum();
        let mut acc = [0.0f32; LANES];
        for (q, v) in query_chunks.zip(vector_chunks) {
            for i in 0..LANES {
                acc[i] += lane(q[i], v[i]);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, |x, y| x * y)
    }
    pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, |x, y| (x - y) * (x - y))
    }
    pub fn dot_f16(query: &[f32], bits: &[u16]) -> f32 {
        reduce(query, bits, |q, h| q * f16_bits_to_f32(h))
    }
    pub fn l2sq_f16(query: &[f32], bits: &[u16]) -> f32 {
        reduce(query, bits, |q, h| {
            let d = q - f16_bits_to_f32(h);
            d * d
        })
    }
    pub fn dot_i8(query: &[f32], codes: &[i8]) -> f32 {
        reduce(query, codes, |q, c| q * c as f32)
    }
    pub fn l2sq_i8(query: &[f32], codes: &[i8], scale: f32) -> f32 {
        reduce(query, codes, |q, c| {
            let d = q - scale * c as f32;
            d * d
        })
    }
}

/// The wasm32 simd128 kernels: the AVX2 kernels' scheme in 128-bit lanes. 16 elements per step
/// in four f32x4 accumulators (lanes 0-3, 4-7, 8-11, 12-15), reduced in the AVX2 kernels' order.
/// Stored elements widen exactly to f32: f16 by the bit manipulation of [`f16_bits_to_f32`], i8
/// through i16 and i32. (The query stays f32, as natively: an i16 query and `i32x4_dot_i16x8`
/// would change the scores.)
///
/// Multiply-adds are relaxed SIMD's `f32x4.relaxed_madd`/`relaxed_nmadd` (the build enables
/// `relaxed-simd`, see .cargo/config.toml): V8 emits one fused FMA where the CPU has it, as the
/// AVX2 kernels do, so on such hosts wasm and native sums are the same bits; elsewhere they
/// differ by FMA rounding. Fused, the kernels run in about two thirds of the time of a separate
/// multiply and add under V8.
#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    target_feature = "relaxed-simd"
))]
mod simd128 {
    use core::arch::wasm32::*;

    use super::{portable, F16_IN_F32_MASK, F16_REBIAS, LANES};

    /// `load` widens the 16 stored elements of a chunk to four f32x4; `step(acc, q, v)` folds
    /// four lanes; the tail (fewer than 16 elements) goes to the portable kernel, as on x86_64.
    #[inline(always)]
    fn reduce<T: Copy>(
        query: &[f32],
        vector: &[T],
        load: impl Fn(&[T]) -> [v128; 4],
        step: impl Fn(v128, v128, v128) -> v128,
        tail: impl Fn(&[f32], &[T]) -> f32,
    ) -> f32 {
        let len = query.len().min(vector.len());
        let query_chunks = query[..len].chunks_exact(LANES);
        let vector_chunks = vector[..len].chunks_exact(LANES);
        let rest = tail(query_chunks.remainder(), vector_chunks.remainder());
        let mut acc = [f32x4_splat(0.0); 4];
        for (q, v) in query_chunks.zip(vector_chunks) {
            let q = load_f32(q);
            let v = load(v);
            for lane in 0..4 {
                acc[lane] = step(acc[lane], q[lane], v[lane]);
            }
        }
        let halves = f32x4_add(f32x4_add(acc[0], acc[2]), f32x4_add(acc[1], acc[3]));
        let pairs = f32x4_add(halves, i32x4_shuffle::<2, 3, 2, 3>(halves, halves));
        f32x4_extract_lane::<0>(pairs) + f32x4_extract_lane::<1>(pairs) + rest
    }

    #[inline(always)]
    fn load_f32(chunk: &[f32]) -> [v128; 4] {
        assert!(chunk.len() >= LANES);
        // SAFETY: 16 f32 are in bounds (asserted; the callers' chunks make it free); v128_load
        // needs no alignment.
        unsafe { [0, 4, 8, 12].map(|at| v128_load(chunk.as_ptr().add(at).cast())) }
    }

    /// [`f16_bits_to_f32`] on 16 lanes, with its shifts done in 16-bit lanes: the upper half of
    /// `(h << 16) >> 3` (arithmetic) is `h >> 3` (arithmetic), its lower half `h << 13`; an
    /// interleave of the two halves gives the f32 bits.
    #[inline(always)]
    fn load_f16(chunk: &[u16]) -> [v128; 4] {
        assert!(chunk.len() >= LANES);
        // SAFETY: as in load_f32, 16 u16.
        let halves = unsafe {
            let p = chunk.as_ptr();
            [v128_load(p.cast()), v128_load(p.add(8).cast())]
        };
        let [(low0, high0), (low1, high1)] = halves.map(|h| {
            let upper = v128_and(i16x8_shr(h, 3), u16x8_splat((F16_IN_F32_MASK >> 16) as u16));
            (i16x8_shl(h, 13), upper)
        });
        [
            i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(low0, high0),
            i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(low0, high0),
            i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(low1, high1),
            i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(low1, high1),
        ]
        .map(|bits| f32x4_mul(bits, f32x4_splat(F16_REBIAS)))
    }

    #[inline(always)]
    fn load_i8(chunk: &[i8]) -> [v128; 4] {
        assert!(chunk.len() >= LANES);
        // SAFETY: as in load_f32, 16 i8.
        let codes = unsafe { v128_load(chunk.as_ptr().cast()) };
        let (low, high) = (
            i16x8_extend_low_i8x16(codes),
            i16x8_extend_high_i8x16(codes),
        );
        [
            i32x4_extend_low_i16x8(low),
            i32x4_extend_high_i16x8(low),
            i32x4_extend_low_i16x8(high),
            i32x4_extend_high_i16x8(high),
        ]
        .map(|lane| f32x4_convert_i32x4(lane))
    }

    fn multiply_add(acc: v128, q: v128, v: v128) -> v128 {
        f32x4_relaxed_madd(q, v, acc)
    }

    fn square_add(acc: v128, q: v128, v: v128) -> v128 {
        let d = f32x4_sub(q, v);
        f32x4_relaxed_madd(d, d, acc)
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, load_f32, multiply_add, portable::dot_f32)
    }
    pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        reduce(a, b, load_f32, square_add, portable::l2sq_f32)
    }
    pub fn dot_f16(query: &[f32], bits: &[u16]) -> f32 {
        reduce(query, bits, load_f16, multiply_add, portable::dot_f16)
    }
    pub fn l2sq_f16(query: &[f32], bits: &[u16]) -> f32 {
        reduce(query, bits, load_f16, square_add, portable::l2sq_f16)
    }
    pub fn dot_i8(query: &[f32], codes: &[i8]) -> f32 {
        reduce(query, codes, load_i8, multiply_add, portable::dot_i8)
    }
    pub fn l2sq_i8(query: &[f32], codes: &[i8], scale: f32) -> f32 {
        let scale4 = f32x4_splat(scale);
        reduce(
            query,
            codes,
            load_i8,
            |acc, q, v| {
                let d = f32x4_relaxed_nmadd(scale4, v, q);
                f32x4_relaxed_madd(d, d, acc)
            },
            |q, c| portable::l2sq_i8(q, c, scale),
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::portable;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Folds 16 elements per step into two accumulators (`step(acc, q, v)`), then adds the
    /// portable kernel's result for the tail. `load8` widens 8 stored elements to f32.
    #[inline(always)]
    unsafe fn reduce<T: Copy>(
        query: &[f32],
        vector: &[T],
        load8: impl Fn(*const T) -> __m256,
        step: impl Fn(__m256, __m256, __m256) -> __m256,
        tail: impl Fn(&[f32], &[T]) -> f32,
    ) -> f32 {
        let len = query.len().min(vector.len());
        let (q, v) = (query.as_ptr(), vector.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 <= len for both slices.
            unsafe {
                acc0 = step(acc0, _mm256_loadu_ps(q.add(i)), load8(v.add(i)));
                acc1 = step(acc1, _mm256_loadu_ps(q.add(i + 8)), load8(v.add(i + 8)));
            }
            i += 16;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let halves = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let single = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
        _mm_cvtss_f32(single) + tail(&query[i..len], &vector[i..len])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        unsafe {
            reduce(
                a,
                b,
                |p| _mm256_loadu_ps(p),
                |acc, x, y| _mm256_fmadd_ps(x, y, acc),
                portable::dot_f32,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
        unsafe {
            reduce(
                a,
                b,
                |p| _mm256_loadu_ps(p),
                |acc, x, y| {
                    let d = _mm256_sub_ps(x, y);
                    _mm256_fmadd_ps(d, d, acc)
                },
                portable::l2sq_f32,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(query: &[f32], bits: &[u16]) -> f32 {
        unsafe {
            reduce(
                query,
                bits,
                |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                |acc, q, v| _mm256_fmadd_ps(q, v, acc),
                portable::dot_f16,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn l2sq_f16(query: &[f32], bits: &[u16]) -> f32 {
        unsafe {
            reduce(
                query,
                bits,
                |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                |acc, q, v| {
                    let d = _mm256_sub_ps(q, v);
                    _mm256_fmadd_ps(d, d, acc)
                },
                portable::l2sq_f16,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_i8(query: &[f32], codes: &[i8]) -> f32 {
        unsafe {
            reduce(
                query,
                codes,
                |p| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
                |acc, q, v| _mm256_fmadd_ps(q, v, acc),
                portable::dot_i8,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn l2sq_i8(query: &[f32], codes: &[i8], scale: f32) -> f32 {
        let scale8 = _mm256_set1_ps(scale);
        unsafe {
            reduce(
                query,
                codes,
                |p| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
                |acc, q, v| {
                    let d = _mm256_fnmadd_ps(scale8, v, q);
                    _mm256_fmadd_ps(d, d, acc)
                },
                |q, c| portable::l2sq_i8(q, c, scale),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_vector(rng: &mut impl Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-3 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn f16_decode_matches_half_for_every_finite_value() {
        for bits in 0..=u16::MAX {
            let reference = half::f16::from_bits(bits);
            if reference.is_finite() {
                assert_eq!(
                    f16_bits_to_f32(bits),
                    reference.to_f32(),
                    "bits {bits:#06x}"
                );
            }
        }
    }

    #[test]
    fn kernels_match_naive_sums_for_all_lengths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 33, 384, 385] {
            let q = random_vector(&mut rng, len);
            let v = random_vector(&mut rng, len);
            let mut bits = Vec::new();
            encode_f16(&v, &mut bits);
            let mut codes = Vec::new();
            let scale = encode_i8(&v, &mut codes);
            let v16: Vec<f32> = bits.iter().map(|&b| f16_bits_to_f32(b)).collect();
            let v8: Vec<f32> = codes.iter().map(|&c| scale * c as f32).collect();
            let naive_dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let naive_l2 =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
            assert!(close(dot_f32(&q, &v), naive_dot(&q, &v)));
            assert!(close(l2sq_f32(&q, &v), naive_l2(&q, &v)));
            assert!(close(dot_f16(&q, &bits), naive_dot(&q, &v16)));
            assert!(close(l2sq_f16(&q, &bits), naive_l2(&q, &v16)));
            assert!(close(scale * dot_i8(&q, &codes), naive_dot(&q, &v8)));
            assert!(close(l2sq_i8(&q, &codes, scale), naive_l2(&q, &v8)));
            assert!(close(portable::dot_f16(&q, &bits), naive_dot(&q, &v16)));
            assert!(close(
                portable::l2sq_i8(&q, &codes, scale),
                naive_l2(&q, &v8)
            ));
        }
    }

    /// The vectorised kernels this target dispatches to (AVX2 here when the CPU has it; the
    /// wasm32 simd128 ones are compared with native search by tests/e2e/test_wasm_search.py)
    /// equal the portable ones up to FMA rounding, on every length and on the edge values of
    /// the stored formats: ±0, subnormal and largest halves, -128 and 127.
    #[test]
    fn vectorised_kernels_equal_portable_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let edge_halves = [
            0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00,
        ];
        let edge_codes = [-128i8, 127, 0, -1];
        for len in [0, 1, 15, 16, 17, 31, 33, 64, 384, 385] {
            let q = random_vector(&mut rng, len);
            let mut bits = Vec::new();
            encode_f16(&random_vector(&mut rng, len), &mut bits);
            let mut codes = Vec::new();
            let scale = encode_i8(&random_vector(&mut rng, len), &mut codes);
            for (i, (b, c)) in bits.iter_mut().zip(codes.iter_mut()).enumerate().step_by(3) {
                *b = edge_halves[i % edge_halves.len()];
                *c = edge_codes[i % edge_codes.len()];
            }
            let v16: Vec<f32> = bits.iter().map(|&b| f16_bits_to_f32(b)).collect();
            let v8: Vec<f32> = codes.iter().map(|&c| scale * c as f32).collect();
            let v = random_vector(&mut rng, len);
            // Rounding differences are relative to the terms' magnitudes, not to their sum.
            let agree = |fast: f32, portable: f32, a: &[f32], b: &[f32], l2: bool| {
                let magnitude: f32 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| if l2 { (x - y) * (x - y) } else { (x * y).abs() })
                    .sum();
                assert!(
                    (fast - portable).abs() <= 1e-6 * magnitude,
                    "len {len}: {fast} vs {portable} (terms {magnitude})"
                );
            };
            agree(dot_f32(&q, &v), portable::dot_f32(&q, &v), &q, &v, false);
            agree(l2sq_f32(&q, &v), portable::l2sq_f32(&q, &v), &q, &v, true);
            agree(
                dot_f16(&q, &bits),
                portable::dot_f16(&q, &bits),
                &q,
                &v16,
                false,
            );
            agree(
                l2sq_f16(&q, &bits),
                portable::l2sq_f16(&q, &bits),
                &q,
                &v16,
                true,
            );
            agree(
                scale * dot_i8(&q, &codes),
                scale * portable::dot_i8(&q, &codes),
                &q,
                &v8,
                false,
            );
            agree(
                l2sq_i8(&q, &codes, scale),
                portable::l2sq_i8(&q, &codes, scale),
                &q,
                &v8,
                true,
            );
        }
    }

    #[test]
    fn i8_round_trip_error_is_within_half_a_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let v = random_vector(&mut rng, 384);
        let mut codes = Vec::new();
        let scale = encode_i8(&v, &mut codes);
        for (x, c) in v.iter().zip(&codes) {
            assert!((x - scale * *c as f32).abs() <= scale * 0.5 + 1e-6);
        }
        let mut zero_codes = Vec::new();
        assert_eq!(encode_i8(&[0.0; 4], &mut zero_codes), 0.0);
        assert_eq!(zero_codes, vec![0; 4]);
    }
}
