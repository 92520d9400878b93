//! Vector quantisation (f32 → f16 bits / i8 + scale) and the distance kernels that read quantised vectors.
//!
//! Kernels come in two builds: a portable one written in fixed-width chunks so LLVM vectorises it
//! (this is the one wasm32 uses), and on x86_64 an AVX2+FMA+F16C one chosen at run time.

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

/// Exact f16 → f32 for every finite half (normal and subnormal), branch-free so it vectorises:
/// move exponent and mantissa into f32 position, then rebias the exponent by multiplying by 2^112.
#[inline(always)]
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    const REBIAS: f32 = 5.192_297e33; // 2^112 = 2^(127 - 15)
    let bits = bits as u32;
    let magnitude = f32::from_bits((bits & 0x7fff) << 13) * REBIAS;
    f32::from_bits(magnitude.to_bits() | ((bits & 0x8000) << 16))
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { avx2::dot_f32(a, b) };
    }
    portable::dot_f32(a, b)
}

pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_f32(a, b) };
    }
    portable::l2sq_f32(a, b)
}

/// Inner product of an f32 query with an f16 vector.
pub fn dot_f16(query: &[f32], bits: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::dot_f16(query, bits) };
    }
    portable::dot_f16(query, bits)
}

/// Squared euclidean distance between an f32 query and an f16 vector.
pub fn l2sq_f16(query: &[f32], bits: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_f16(query, bits) };
    }
    portable::l2sq_f16(query, bits)
}

/// Inner product of an f32 query with the codes of an i8 vector (multiply by the scale afterwards).
pub fn dot_i8(query: &[f32], codes: &[i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::dot_i8(query, codes) };
    }
    portable::dot_i8(query, codes)
}

/// Squared euclidean distance between an f32 query and the i8 vector `scale · codes`.
pub fn l2sq_i8(query: &[f32], codes: &[i8], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: as in dot_f32.
        return unsafe { avx2::l2sq_i8(query, codes, scale) };
    }
    portable::l2sq_i8(query, codes, scale)
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
