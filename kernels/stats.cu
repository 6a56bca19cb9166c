// Whole-array statistics: moments (count, mean, std, min, max), the largest |value| and exact
// order statistics (median, MAD) by radix select.
//
// Memory layout: `data` is a contiguous f32 array of `count` elements (a frame or a CFA
// channel gathered by the launcher); non-finite values are ignored everywhere (NaN = missing).
//
// Launch geometry: 1-D grids of 1-D blocks of exactly AW_STATS_BLOCK (256) threads, grid-stride
// loops (any grid size); the `*_finish` / `*_step` kernels run as one block of
// AW_STATS_BLOCK threads (<<<1, 256>>>).
//
// Moments (deterministic: fixed per-block trees, then one block over the partials):
//   stats_moments(data, count, center, partials)  partials[block] = {n, Σ(x−c), Σ(x−c)², min, max}
//   stats_moments_finish(partials, blocks, result) result = the same 5 doubles over all blocks
// Two runs give `mean_and_std` of src/science/stats.rs: center 0 → mean = Σx / n; center mean
// → population std = sqrt(Σ(x−mean)² / n). (The CPU sums sequentially; the tree order here
// differs in the last bits of f64.)
//
// Exact k-th smallest (0-based) finite value by an 8-bit radix select over the 32-bit order
// keys (4 passes) — or over the 64-bit keys of f64 deviations |x − center| (8 passes), for MAD:
//   state = {prefix, k} (u64[2], set by the host to {0, k}); hist = u32[256] zeroed;
//   for shift in 24, 16, 8, 0 (f32) / 56, 48, …, 0 (deviations):
//       stats_radix_histogram_f32(data, count, state, shift, hist)   (or _absdev_f64)
//       stats_radix_step(hist, state, shift)      (<<<1, 256>>>: picks the digit, zeroes hist)
//   then state[0] is the key: stats_radix_value_f32 / _f64 converts it to the value.
// Median = k = n/2 (and n/2 − 1 for even n, averaged in f64: numpy's convention); MAD = the
// same over |x − median| in f64 (`mad_around`). With MAD_TO_SIGMA = 1.4826 this gives
// `estimate(.., Estimator::MedianMad)` exactly.

#include "common.cuh"

#define AW_STATS_BLOCK 256

// The order key of a finite f32 as u32 (total order, −0 as +0).
__device__ __forceinline__ u32 ukey_f32(float x) { return (u32)key_of(x) ^ 0x80000000u; }

__device__ __forceinline__ float ukey_value_f32(u32 k) {
    return key_value((i32)(k ^ 0x80000000u));
}

// A block-wide tree reduction of 5 doubles: sums for 0..3, min for 3, max for 4.
__device__ void block_reduce5(double v[5], double* shared /* [5][AW_STATS_BLOCK] */) {
    const int t = threadIdx.x;
    for (int j = 0; j < 5; ++j) shared[j * AW_STATS_BLOCK + t] = v[j];
    __syncthreads();
    for (int stride = AW_STATS_BLOCK / 2; stride > 0; stride /= 2) {
        if (t < stride) {
            for (int j = 0; j < 3; ++j) {
                shared[j * AW_STATS_BLOCK + t] += shared[j * AW_STATS_BLOCK + t + stride];
            }
            shared[3 * AW_STATS_BLOCK + t] =
                fmin(shared[3 * AW_STATS_BLOCK + t], shared[3 * AW_STATS_BLOCK + t + stride]);
            shared[4 * AW_STATS_BLOCK + t] =
                fmax(shared[4 * AW_STATS_BLOCK + t], shared[4 * AW_STATS_BLOCK + t + stride]);
        }
        __syncthreads();
    }
    for (int j = 0; j < 5; ++j) v[j] = shared[j * AW_STATS_BLOCK];
}

// CPU oracle: crate::science::stats::image_stats (mean_and_std, min, max, nan_count)
extern "C" __global__ void stats_moments(const float* __restrict__ data, u64 count,
                                         double center, double* __restrict__ partials) {
    __shared__ double shared[5 * AW_STATS_BLOCK];
    double v[5] = {0.0, 0.0, 0.0, AW_INF_D, -AW_INF_D};
    for (u64 i = global_thread(); i < count; i += global_threads()) {
        const float x = data[i];
        if (!is_finite_f(x)) continue;
        const double d = (double)x - center;
        v[0] += 1.0;
        v[1] += d;
        v[2] += d * d;
        v[3] = fmin(v[3], (double)x);
        v[4] = fmax(v[4], (double)x);
    }
    block_reduce5(v, shared);
    if (threadIdx.x == 0) {
        for (int j = 0; j < 5; ++j) partials[5 * (u64)blockIdx.x + j] = v[j];
    }
}

// One block: reduces `blocks` partials of stats_moments into result[5].
extern "C" __global__ void stats_moments_finish(const double* __restrict__ partials, int blocks,
                                                double* __restrict__ result) {
    __shared__ double shared[5 * AW_STATS_BLOCK];
    double v[5] = {0.0, 0.0, 0.0, AW_INF_D, -AW_INF_D};
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
        const double* p = partials + 5 * (u64)b;
        v[0] += p[0];
        v[1] += p[1];
        v[2] += p[2];
        v[3] = fmin(v[3], p[3]);
        v[4] = fmax(v[4], p[4]);
    }
    block_reduce5(v, shared);
    if (threadIdx.x == 0) {
        for (int j = 0; j < 5; ++j) result[j] = v[j];
    }
}

// result (u32, set to 0 by the host) = the bits of the largest finite |value|: non-negative
// floats order like their bits, so atomicMax is exact and order-independent. RCD's `scale`
// is max(that, FLT_MIN).
// CPU oracle: crate::science::cfa::RcdKernel::new (the `scale` reduction)
extern "C" __global__ void stats_absmax_f32(const float* __restrict__ data, u64 count,
                                            u32* __restrict__ result) {
    u32 best = 0;
    for (u64 i = global_thread(); i < count; i += global_threads()) {
        const float x = data[i];
        if (is_finite_f(x)) best = max(best, __float_as_uint(fabsf(x)));
    }
    atomicMax(result, best);
}

// Histogram of digit (key >> shift) & 255 of the finite values whose key bits above
// shift + 8 equal state[0]'s.
// CPU oracle: crate::science::stats::median_in_place / estimate (order statistics)
extern "C" __global__ void stats_radix_histogram_f32(const float* __restrict__ data, u64 count,
                                                     const u64* __restrict__ state, u32 shift,
                                                     u32* __restrict__ hist) {
    __shared__ u32 local[256];
    for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
    __syncthreads();
    const u32 prefix = (u32)state[0];
    const u32 high_mask = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
    for (u64 i = global_thread(); i < count; i += global_threads()) {
        const float x = data[i];
        if (!is_finite_f(x)) continue;
        const u32 k = ukey_f32(x);
        if ((k & high_mask) == (prefix & high_mask)) atomicAdd(&local[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        if (local[b]) atomicAdd(&hist[b], local[b]);
    }
}

// The same over the f64 deviations |x − center| of the finite values (non-negative doubles
// order like their bits), for MAD.
// CPU oracle: crate::science::stats::mad_around
extern "C" __global__ void stats_radix_histogram_absdev_f64(const float* __restrict__ data,
                                                            u64 count, double center,
                                                            const u64* __restrict__ state,
                                                            u32 shift, u32* __restrict__ hist) {
    __shared__ u32 local[256];
    for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
    __syncthreads();
    const u64 prefix = state[0];
    const u64 high_mask = shift >= 56 ? 0ull : (~0ull << (shift + 8));
    for (u64 i = global_thread(); i < count; i += global_threads()) {
        const float x = data[i];
        if (!is_finite_f(x)) continue;
        const u64 k = (u64)__double_as_longlong(fabs((double)x - center));
        if ((k & high_mask) == (prefix & high_mask)) {
            atomicAdd(&local[(u32)(k >> shift) & 255u], 1u);
        }
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        if (local[b]) atomicAdd(&hist[b], local[b]);
    }
}

// One block (the first thread does the scan): finds the digit holding the k-th key, sets it
// in state[0], subtracts the counts below it from state[1], and zeroes `hist` for the next
// pass.
extern "C" __global__ void stats_radix_step(u32* __restrict__ hist, u64* __restrict__ state,
                                            u32 shift) {
    __shared__ u32 counts[256];
    for (int b = threadIdx.x; b < 256; b += blockDim.x) counts[b] = hist[b];
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 k = state[1];
        u32 digit = 255;
        for (u32 b = 0; b < 256; ++b) {
            if (k < (u64)counts[b]) {
                digit = b;
                break;
            }
            k -= counts[b];
        }
        state[0] |= (u64)digit << shift;
        state[1] = k;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
}

// The selected value as f64 (result[0]) from the final state of an f32 selection.
extern "C" __global__ void stats_radix_value_f32(const u64* __restrict__ state,
                                                 double* __restrict__ result) {
    if (threadIdx.x == 0 && blockIdx.x == 0) result[0] = (double)ukey_value_f32((u32)state[0]);
}

// The selected deviation (result[0]) from the final state of an absdev selection.
extern "C" __global__ void stats_radix_value_f64(const u64* __restrict__ state,
                                                 double* __restrict__ result) {
    if (threadIdx.x == 0 && blockIdx.x == 0) result[0] = __longlong_as_double((i64)state[0]);
}
