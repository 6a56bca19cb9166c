// Stacking kernels: per-pixel reduction of N frames with optional rejection.
//
// Definitions: the module docs of src/science/stack.rs, followed to the letter (NaN/±inf =
// missing sample; f64 statistics, f32 result; medians exact, numpy's even convention; strict
// rejections; the guards of each method; rejected = finite samples rejected).
//
// Memory layout
// - `frames`: one tile (band) of N frames, `[n][rows][width]` f32, contiguous; the tile is
//   rows `row0 .. row0 + rows` of the image (row0 fixes the CFA colour of each row).
// - `weights`: `[n]` f32 frame weights (finite, ≥ 0), or null for equal weights. They apply to
//   the mean-based methods only (Sum and Median ignore them).
// - `coeffs`: `[n][3][2]` f32 normalisation coefficients (factor, offset) per frame and
//   channel, applied on load as `x · factor + offset` in f32 (`normalize_rows` in
//   src/compute/cpu.rs), or null for none. `channels` maps a pixel to its channel: the
//   2-bit-per-cell code of common.cuh (Mono = 0, Cfa(pattern) = the pattern code,
//   Plane(c) = c · 0x55).
// - `out`: `[rows][width]` f32; `rejected`: `[rows][width]` u32 per-pixel rejected-sample
//   counts, or null. The host sums them for the band's total.
//
// Launch geometry: 1-D grid of 1-D blocks, one thread per output pixel (grid-stride loop over
// rows · width pixels; e.g. 128 threads per block, 64 for n2048). Each thread keeps its
// pixel's samples in local memory sized by the compile-time MAXN of the entry point
// (`stack_<method>_f32_n<MAXN>`, MAXN ∈ {32, 128, 512, 2048}); the launcher picks the smallest
// MAXN ≥ n. With n > MAXN, the methods that keep samples write NaN and rejected = 0xffffffff
// (a launcher bug, never a result); sum and mean keep no samples and accept any n.
// Parameters (13, the same for every entry point): frames, n, rows, width, row0, weights,
// coeffs, channels, low, high, iterations, out, rejected (low/high/iterations ignored by the
// methods without them; percentile ignores iterations).
//
// Implementation: the finite samples become integer keys (common.cuh, the CPU's `Key`) and
// are sorted once per pixel. Every clipping pass keeps the samples inside an interval, so the
// kept samples are always a contiguous run [lo, hi) of the sorted keys: a pass finds the
// median at the middle of the run, computes its scale, and moves lo/hi inwards. MAD is a
// merge walk over the two sorted halves of the deviations (no extra storage). LinearFit sorts
// (key, frame) pairs packed in 64 bits (ties in frame order, as the CPU) and compacts them.
//
// Agreement with the CPU: Sum, Mean, Median, Percentile's and the MAD/median statistics, and
// LinearFit are computed in the CPU's exact order (bit-identical); the std-based scales
// (SigmaClip, Winsorized) sum the kept samples in sorted order, the CPU in its partition
// order, so those f64 sums may differ in the last bits (results agree to ≪ 1e-4 relative; a
// sample lying on a rejection bound to ~1e-15 could be decided differently).

#include "common.cuh"

#define AW_SUM 0
#define AW_MEAN 1
#define AW_MEDIAN 2
#define AW_SIGMA_CLIP 3
#define AW_WINSORIZED 4
#define AW_MAD_CLIP 5
#define AW_PERCENTILE 6
#define AW_LINEAR_FIT 7

// Guards of `clip` (src/science/stack.rs `Guard`).
#define AW_GUARD_ASTROPY 0
#define AW_GUARD_NEVER_EMPTY 1
#define AW_GUARD_SIRIL 2

#define AW_MAD_TO_SIGMA 1.4826
#define AW_WINSORIZED_MAX_STEPS 1000

// One pixel's samples in the tile, normalised on load.
struct Pixel {
    const float* frames;
    u64 plane;  // rows · width
    u64 index;  // r · width + x
    const float* coeffs;
    int channel;

    __device__ __forceinline__ float load(int f) const {
        float v = frames[(u64)f * plane + index];
        if (coeffs) {
            const float* c = coeffs + (f * 3 + channel) * 2;
            v = v * c[0] + c[1];
        }
        return v;
    }
};

// ---------------------------------------------------------------------------------------
// Means (`weighted_mean` in src/science/stack.rs).

// Σx over the finite samples in frame order, lanes by finite index (`Method::Sum`).
// CPU oracle: crate::science::stack::reduce (Method::Sum)
__device__ float finite_sum(const Pixel& px, int n) {
    Lanes2 l;
    lanes_init(l);
    int j = 0;
    for (int f = 0; f < n; ++f) {
        const float v = px.load(f);
        if (is_finite_f(v)) lanes_add(l, j++, (double)(v + 0.0f), 0.0);
    }
    return j == 0 ? AW_NAN_F : (float)lanes_a(l);
}

// The mean of the finite samples within `range`: weighted by frame (lanes by frame index,
// as the CPU's frame-order pass) when `weights` is set, else plain (lanes by kept index).
// Falls back to the plain mean when the kept weights do not sum to a positive number; NaN
// when nothing is kept.
__device__ float kept_mean(const Pixel& px, int n, const float* weights, KeyRange range) {
    Lanes2 l;
    lanes_init(l);
    if (weights) {
        for (int f = 0; f < n; ++f) {
            const float v = px.load(f);
            const bool keep = key_range_contains_value(range, v);
            const double w = (double)weights[f];
            lanes_add(l, f, keep ? w * (double)v : 0.0, keep ? w : 0.0);
        }
        const double weighted = lanes_a(l), total = lanes_b(l);
        if (total > 0.0) return (float)(weighted / total);
        lanes_init(l);
        for (int f = 0; f < n; ++f) {
            const float v = px.load(f);
            const bool keep = key_range_contains_value(range, v);
            lanes_add(l, f, keep ? (double)v : 0.0, keep ? 1.0 : 0.0);
        }
        return (float)(lanes_a(l) / lanes_b(l));
    }
    int j = 0;
    for (int f = 0; f < n; ++f) {
        const float v = px.load(f);
        if (key_range_contains_value(range, v)) {
            // `Key::value` turns −0 into +0.
            lanes_add(l, j++, 1.0 * (double)(v + 0.0f), 1.0);
        }
    }
    return (float)(lanes_a(l) / lanes_b(l));
}

// ---------------------------------------------------------------------------------------
// Statistics of a sorted run of keys k[0..n).

__device__ __forceinline__ double run_median(const i32* k, int n) {
    const double upper = key_double(k[n / 2]);
    if (n % 2 == 1) return upper;
    return (key_double(k[n / 2 - 1]) + upper) / 2.0;
}

// `std_around`: one-pass std around c, ddof 0 or 1.
__device__ double run_std(const i32* k, int n, double c, int ddof) {
    Lanes2 l;
    lanes_init(l);
    for (int i = 0; i < n; ++i) {
        const double d = key_double(k[i]) - c;
        lanes_add(l, i, d, d * d);
    }
    const double sum = lanes_a(l), squares = lanes_b(l), count = (double)n;
    return sqrt(fmax((squares - sum * sum / count) / (count - (double)ddof), 0.0));
}

__device__ double wide_std(const double* v, int n, double c) {
    Lanes2 l;
    lanes_init(l);
    for (int i = 0; i < n; ++i) {
        const double d = v[i] - c;
        lanes_add(l, i, d, d * d);
    }
    const double sum = lanes_a(l), squares = lanes_b(l), count = (double)n;
    return sqrt(fmax((squares - sum * sum / count) / (count - 1.0), 0.0));
}

// Siril's winsorized σ around the median c (n ≥ 2); `wide` is scratch of n doubles.
// CPU oracle: crate::science::stack::winsorized_sigma (private; via reduce)
__device__ double winsorized_sigma(const i32* k, int n, double c, double* wide) {
    double s = run_std(k, n, c, 1);
    for (int i = 0; i < n; ++i) wide[i] = key_double(k[i]);
    for (int step = 0; step < AW_WINSORIZED_MAX_STEPS; ++step) {
        const double s0 = s;
        const double low = c - 1.5 * s0, high = c + 1.5 * s0;
        for (int i = 0; i < n; ++i) {
            double y = wide[i];
            y = y < low ? low : (y > high ? high : y);
            wide[i] = y;
        }
        s = 1.134 * wide_std(wide, n, c);
        if (fabs(s - s0) <= 5e-4 * s0) break;
    }
    return s;
}

// MAD of the sorted run around c: the median of |x − c|, from the two sorted sequences
// x[m..] − c (ascending) and c − x[m−1], c − x[m−2], … (ascending), merged up to the middle.
// CPU oracle: crate::science::stats::mad_around
__device__ double run_mad(const i32* k, int n, double c) {
    int m = 0;
    while (m < n && key_double(k[m]) < c) ++m;
    int left = m - 1, right = m;  // next candidates
    const int target = n / 2;
    double previous = 0.0, current = 0.0;
    for (int t = 0; t <= target; ++t) {
        previous = current;
        const double dl = left >= 0 ? fabs(key_double(k[left]) - c) : AW_INF_D;
        const double dr = right < n ? fabs(key_double(k[right]) - c) : AW_INF_D;
        if (dl <= dr) {
            current = dl;
            --left;
        } else {
            current = dr;
            ++right;
        }
    }
    if (n % 2 == 1) return current;
    return (previous + current) / 2.0;
}

// ---------------------------------------------------------------------------------------
// The rejection passes (`clip`): keys k[0..finite) sorted; returns the kept run in lo/hi.

template <int METHOD>
__device__ void clip_passes(const i32* k, int finite, u32 iterations, float low_k,
                            float high_k, double* wide, int& lo, int& hi) {
    const int guard = METHOD == AW_SIGMA_CLIP    ? AW_GUARD_ASTROPY
                      : METHOD == AW_PERCENTILE ? AW_GUARD_NEVER_EMPTY
                                                : AW_GUARD_SIRIL;
    const int min_count = guard == AW_GUARD_SIRIL ? 3 : 1;
    if (METHOD == AW_PERCENTILE) iterations = 1;
    lo = 0;
    hi = finite;
    for (u32 pass = 0; pass < iterations; ++pass) {
        const int kept = hi - lo;
        if (kept < min_count) break;
        const i32* run = k + lo;
        const double c = run_median(run, kept);
        double low, high;
        if (METHOD == AW_SIGMA_CLIP) {
            const double s = run_std(run, kept, c, 0);
            low = c - (double)low_k * s;
            high = c + (double)high_k * s;
        } else if (METHOD == AW_WINSORIZED) {
            const double s = winsorized_sigma(run, kept, c, wide);
            low = c - (double)low_k * s;
            high = c + (double)high_k * s;
        } else if (METHOD == AW_MAD_CLIP) {
            const double s = AW_MAD_TO_SIGMA * run_mad(run, kept, c);
            low = c - (double)low_k * s;
            high = c + (double)high_k * s;
        } else {  // AW_PERCENTILE
            if (c == 0.0) {
                low = -1.7976931348623157e308;
                high = 1.7976931348623157e308;
            } else {
                low = c - (double)low_k * fabs(c);
                high = c + (double)high_k * fabs(c);
            }
        }
        const KeyRange range = key_range(low, high);
        int new_lo = lo, new_hi = hi;
        while (new_lo < new_hi && k[new_lo] < range.first) ++new_lo;
        while (new_hi > new_lo && k[new_hi - 1] > range.last) --new_hi;
        const int survivors = new_hi - new_lo;
        if (survivors == kept || (survivors == 0 && guard != AW_GUARD_ASTROPY)) break;
        lo = new_lo;
        hi = new_hi;
    }
}

// ---------------------------------------------------------------------------------------
// Linear fit clipping on (key, frame) pairs packed as key << 32 | frame.

__device__ __forceinline__ i64 pack(i32 key, int frame) {
    return (i64)(((u64)(u32)key << 32) | (u64)(u32)frame);
}
__device__ __forceinline__ i32 packed_key(i64 p) { return (i32)(u32)((u64)p >> 32); }
__device__ __forceinline__ int packed_frame(i64 p) { return (int)(u32)(p & 0xffffffffLL); }

// `fit_line`: least squares y = a + b·i through sorted y_i, and the mean |residual|.
// CPU oracle: crate::science::stack::fit_line (private; via reduce)
__device__ void fit_line(const i64* r, int kept, double& a, double& b, double& sigma) {
    const double n = (double)kept;
    const double mean_i = (n - 1.0) / 2.0;
    Lanes2 l;
    lanes_init(l);
    for (int i = 0; i < kept; ++i) lanes_add(l, i, key_double(packed_key(r[i])), 0.0);
    const double mean_y = lanes_a(l) / n;
    lanes_init(l);
    for (int i = 0; i < kept; ++i) {
        const double di = (double)i - mean_i;
        lanes_add(l, i, di * (key_double(packed_key(r[i])) - mean_y), di * di);
    }
    b = lanes_a(l) / lanes_b(l);
    a = mean_y - b * mean_i;
    lanes_init(l);
    for (int i = 0; i < kept; ++i) {
        lanes_add(l, i, fabs(key_double(packed_key(r[i])) - (a + b * (double)i)), 0.0);
    }
    sigma = lanes_a(l) / n;
}

// CPU oracle: crate::science::stack::linear_fit (private; via reduce)
template <int MAXN>
__device__ float linear_fit(const Pixel& px, int n, const float* weights, float low_k,
                            float high_k, u32 iterations, u32& rejected) {
    i64 ranked[MAXN];
    int finite = 0;
    for (int f = 0; f < n; ++f) {
        const float v = px.load(f);
        if (is_finite_f(v)) ranked[finite++] = pack(key_of(v), f);
    }
    if (finite == 0) {
        rejected = 0;
        return AW_NAN_F;
    }
    sort_small(ranked, finite);
    int kept = finite;
    for (u32 pass = 0; pass < iterations; ++pass) {
        if (kept < 3) break;
        double a, b, sigma;
        fit_line(ranked, kept, a, b, sigma);
        const double below = (double)low_k * sigma, above = (double)high_k * sigma;
        int survivors = 0;
        for (int i = 0; i < kept; ++i) {
            const double fit = a + b * (double)i, y = key_double(packed_key(ranked[i]));
            survivors += (fit - below <= y && y <= fit + above) ? 1 : 0;
        }
        if (survivors == kept || survivors == 0) break;
        int next = 0;
        for (int i = 0; i < kept; ++i) {
            const double fit = a + b * (double)i, y = key_double(packed_key(ranked[i]));
            if (fit - below <= y && y <= fit + above) ranked[next++] = ranked[i];
        }
        kept = survivors;
    }
    rejected = (u32)(finite - kept);
    // `weighted_mean` over the kept pairs in sorted order.
    Lanes2 l;
    lanes_init(l);
    for (int i = 0; i < kept; ++i) {
        const double y = key_double(packed_key(ranked[i]));
        const double w = weights ? (double)weights[packed_frame(ranked[i])] : 1.0;
        lanes_add(l, i, w * y, w);
    }
    if (lanes_b(l) > 0.0) return (float)(lanes_a(l) / lanes_b(l));
    lanes_init(l);
    for (int i = 0; i < kept; ++i) lanes_add(l, i, key_double(packed_key(ranked[i])), 1.0);
    return (float)(lanes_a(l) / lanes_b(l));
}

// ---------------------------------------------------------------------------------------
// One pixel.

// CPU oracle: crate::science::stack::reduce (per pixel) and stack_band (per tile)
template <int METHOD, int MAXN>
__device__ float reduce_pixel(const Pixel& px, int n, const float* weights, float low_k,
                              float high_k, u32 iterations, u32& rejected) {
    rejected = 0;
    if (METHOD == AW_SUM) return finite_sum(px, n);
    if (METHOD == AW_MEAN) return kept_mean(px, n, weights, key_range_finite());
    if (n > MAXN) {
        rejected = 0xffffffffu;
        return AW_NAN_F;
    }
    if (METHOD == AW_LINEAR_FIT) {
        return linear_fit<MAXN>(px, n, weights, low_k, high_k, iterations, rejected);
    } else {
        i32 keys[MAXN];
        int finite = 0;
        for (int f = 0; f < n; ++f) {
            const float v = px.load(f);
            if (is_finite_f(v)) keys[finite++] = key_of(v);
        }
        if (finite == 0) return AW_NAN_F;
        sort_small(keys, finite);
        if (METHOD == AW_MEDIAN) return (float)run_median(keys, finite);
        double wide[METHOD == AW_WINSORIZED ? MAXN : 1];
        int lo, hi;
        clip_passes<METHOD>(keys, finite, iterations, low_k, high_k, wide, lo, hi);
        rejected = (u32)(finite - (hi - lo));
        KeyRange range;
        if (hi > lo) {
            range.first = keys[lo];
            range.last = keys[hi - 1];
        } else {  // everything rejected (SigmaClip only): an empty range
            range.first = 1;
            range.last = 0;
        }
        return kept_mean(px, n, weights, range);
    }
}

template <int METHOD, int MAXN>
__device__ void stack_tile(const float* __restrict__ frames, int n, int rows, int width,
                           int row0, const float* __restrict__ weights,
                           const float* __restrict__ coeffs, u32 channels, float low,
                           float high, u32 iterations, float* __restrict__ out,
                           u32* __restrict__ rejected) {
    const u64 plane = (u64)rows * (u64)width;
    for (u64 p = global_thread(); p < plane; p += global_threads()) {
        const int r = (int)(p / (u64)width);
        const int x = (int)(p - (u64)r * (u64)width);
        Pixel px;
        px.frames = frames;
        px.plane = plane;
        px.index = p;
        px.coeffs = coeffs;
        px.channel = cfa_color(channels, x, row0 + r);
        u32 count;
        out[p] = reduce_pixel<METHOD, MAXN>(px, n, weights, low, high, iterations, count);
        if (rejected) rejected[p] = count;
    }
}

#define AW_STACK_ENTRY(NAME, METHOD, MAXN)                                                   \
    extern "C" __global__ void stack_##NAME##_f32_n##MAXN(                                   \
        const float* __restrict__ frames, int n, int rows, int width, int row0,              \
        const float* __restrict__ weights, const float* __restrict__ coeffs, u32 channels,  \
        float low, float high, u32 iterations, float* __restrict__ out,                      \
        u32* __restrict__ rejected) {                                                        \
        stack_tile<METHOD, MAXN>(frames, n, rows, width, row0, weights, coeffs, channels,    \
                                 low, high, iterations, out, rejected);                      \
    }

#define AW_STACK_SIZES(NAME, METHOD)   \
    AW_STACK_ENTRY(NAME, METHOD, 32)   \
    AW_STACK_ENTRY(NAME, METHOD, 128)  \
    AW_STACK_ENTRY(NAME, METHOD, 512)  \
    AW_STACK_ENTRY(NAME, METHOD, 2048)

AW_STACK_SIZES(sum, AW_SUM)
AW_STACK_SIZES(mean, AW_MEAN)
AW_STACK_SIZES(median, AW_MEDIAN)
AW_STACK_SIZES(sigma_clip, AW_SIGMA_CLIP)
AW_STACK_SIZES(winsorized, AW_WINSORIZED)
AW_STACK_SIZES(mad_clip, AW_MAD_CLIP)
AW_STACK_SIZES(percentile, AW_PERCENTILE)
AW_STACK_SIZES(linear_fit, AW_LINEAR_FIT)
