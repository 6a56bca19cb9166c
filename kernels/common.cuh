// Shared device helpers of the astroworker CUDA kernels (kernels/*.cu).
//
// Compiled with NVRTC only (device code, no CUDA headers): everything a kernel needs beyond
// NVRTC's built-ins (math functions, atomics, __syncthreads, blockIdx, ...) is defined here.
// Build options: `-std=c++17 --fmad=false` — no fused multiply-add, so that f32/f64
// expressions round exactly like the Rust CPU code (`rustc` never contracts a·b + c).
//
// Conventions shared with the CPU code (src/science):
// - NaN and ±inf are missing samples: `is_finite_f` / `is_finite_d`.
// - Images are row-major `[rows][width]`, x = column, y = row; pixel (x, y) of a CFA mosaic
//   sits at position `cfa_cell(x, y) = (y % 2) * 2 + x % 2` of its 2×2 Bayer cell
//   (`BayerPattern::channel_index`).
// - A Bayer pattern travels as a `colors` code: 4 × 2 bits, bits 2k..2k+1 = the colour
//   (0 R, 1 G, 2 B) of cell position k (`BayerPattern::colors()` in reading order):
//   RGGB = 0|1<<2|1<<4|2<<6 = 0x94, BGGR = 0x16, GRBG = 0x61, GBRG = 0x49.
//   The same code carries a normalisation `ChannelMap`: Mono = 0x00, Plane(c) = c·0x55.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

#define AW_F32_MAX 3.40282346638528859812e+38f
#define AW_F32_MIN_POSITIVE 1.17549435082228750797e-38f
#define AW_NAN_F (__int_as_float(0x7fffffff))
#define AW_NAN_D (__longlong_as_double(0x7ff8000000000000LL))
#define AW_INF_D (__longlong_as_double(0x7ff0000000000000LL))

// ---------------------------------------------------------------------------------------
// NaN / finiteness (`f32::is_finite`: neither NaN nor ±inf).

__device__ __forceinline__ bool is_finite_f(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ bool is_finite_d(double x) {
    return (__double_as_longlong(x) & 0x7ff0000000000000LL) != 0x7ff0000000000000LL;
}

// ---------------------------------------------------------------------------------------
// Global thread index helpers (1-D grid-stride loops use 64-bit counts).

__device__ __forceinline__ u64 global_thread() {
    return (u64)blockIdx.x * (u64)blockDim.x + (u64)threadIdx.x;
}

__device__ __forceinline__ u64 global_threads() {
    return (u64)gridDim.x * (u64)blockDim.x;
}

// ---------------------------------------------------------------------------------------
// Bayer cells.

// Position of (x, y) in its 2×2 cell, 0..4 in reading order (`BayerPattern::channel_index`).
__device__ __forceinline__ int cfa_cell(int x, int y) {
    return ((y & 1) << 1) | (x & 1);
}

// The colour (0 R, 1 G, 2 B) at (x, y) for a pattern code (`BayerPattern::color_at`), or the
// normalisation channel of a `ChannelMap` code.
__device__ __forceinline__ int cfa_color(u32 colors, int x, int y) {
    return (int)((colors >> (2 * cfa_cell(x, y))) & 3u);
}

// ---------------------------------------------------------------------------------------
// Sample keys: a finite f32 as a signed integer with the same order (`Key` in
// src/science/stack.rs: IEEE total order with −0 stored as +0, so the two zeros are equal).

__device__ __forceinline__ i32 key_flip(i32 bits) {
    return bits ^ (i32)(((u32)(bits >> 31)) >> 1);
}

__device__ __forceinline__ i32 key_of(float x) {
    return key_flip(__float_as_int(x + 0.0f));
}

__device__ __forceinline__ float key_value(i32 key) {
    return __int_as_float(key_flip(key));
}

__device__ __forceinline__ double key_double(i32 key) {
    return (double)key_value(key);
}

// `KeyRange::new(low, high)`: the keys of the smallest f32 ≥ low and the largest f32 ≤ high,
// limited to the finite range. Float → double comparisons are exact.
struct KeyRange {
    i32 first;
    i32 last;
};

__device__ __forceinline__ KeyRange key_range_finite() {
    KeyRange r;
    r.first = key_of(-AW_F32_MAX);
    r.last = key_of(AW_F32_MAX);
    return r;
}

__device__ __forceinline__ KeyRange key_range(double low, double high) {
    float first = __double2float_rn(low);
    float last = __double2float_rn(high);
    if ((double)first < low) first = nextafterf(first, __int_as_float(0x7f800000));
    if ((double)last > high) last = nextafterf(last, __int_as_float(0xff800000));
    // fmaxf/fminf ignore a NaN operand, as Rust's f32::max/min.
    KeyRange r;
    r.first = key_of(fmaxf(first, -AW_F32_MAX));
    r.last = key_of(fminf(last, AW_F32_MAX));
    return r;
}

__device__ __forceinline__ bool key_range_contains(KeyRange r, i32 key) {
    return r.first <= key && key <= r.last;
}

// `contains_value`: false for NaN and ±inf (outside the finite range).
__device__ __forceinline__ bool key_range_contains_value(KeyRange r, float x) {
    return is_finite_f(x) && key_range_contains(r, key_of(x));
}

// ---------------------------------------------------------------------------------------
// In-register / local-memory sorting. Every sort here is deterministic; equal keys are equal
// values, so instability does not change any result.

// Insertion sort of v[0..n) (best for n ≲ 32).
template <typename T>
__device__ __forceinline__ void insertion_sort(T* v, int n) {
    for (int i = 1; i < n; ++i) {
        T x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            --j;
        }
        v[j + 1] = x;
    }
}

template <typename T>
__device__ __forceinline__ void sift_down(T* v, int root, int n) {
    for (;;) {
        int child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && v[child] < v[child + 1]) ++child;
        if (!(v[root] < v[child])) return;
        T t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

// Heap sort of v[0..n): O(n log n), in place, no recursion (for the large-N variants).
template <typename T>
__device__ void heap_sort(T* v, int n) {
    for (int i = n / 2 - 1; i >= 0; --i) sift_down(v, i, n);
    for (int end = n - 1; end > 0; --end) {
        T t = v[0];
        v[0] = v[end];
        v[end] = t;
        sift_down(v, 0, end);
    }
}

template <typename T>
__device__ __forceinline__ void sort_small(T* v, int n) {
    if (n <= 32) {
        insertion_sort(v, n);
    } else {
        heap_sort(v, n);
    }
}

// Median of sorted f32 values v[0..n) (n ≥ 1), numpy's convention, in f64
// (`stats::median_by`: the mean of the two middle values for an even count).
__device__ __forceinline__ double sorted_median_f(const float* v, int n) {
    double upper = (double)v[n / 2];
    if (n % 2 == 1) return upper;
    return ((double)v[n / 2 - 1] + upper) / 2.0;
}

// ---------------------------------------------------------------------------------------
// Four-lane f64 sums (`sum_pairs` in src/science/stack.rs): term j goes to lane j mod 4, the
// result is (l0 + l1) + (l2 + l3). The same order as the CPU where the CPU's order is known.

struct Lanes2 {
    double a[4];
    double b[4];
};

__device__ __forceinline__ void lanes_init(Lanes2& l) {
    for (int i = 0; i < 4; ++i) {
        l.a[i] = 0.0;
        l.b[i] = 0.0;
    }
}

__device__ __forceinline__ void lanes_add(Lanes2& l, int j, double a, double b) {
    l.a[j & 3] += a;
    l.b[j & 3] += b;
}

__device__ __forceinline__ double lanes_a(const Lanes2& l) {
    return (l.a[0] + l.a[1]) + (l.a[2] + l.a[3]);
}

__device__ __forceinline__ double lanes_b(const Lanes2& l) {
    return (l.b[0] + l.b[1]) + (l.b[2] + l.b[3]);
}
