// Warp (registration resampling) kernels: bilinear and Lanczos-3.
//
// Definitions: src/science/warp.rs. The 3×3 transform maps an output pixel to the source:
// (x', y', w') = M · (x, y, 1), source position (x'/w', y'/w'), pixel centres at integers.
// Outside [0, W−1] × [0, H−1] the output is NaN (no coverage); taps beyond the edge are
// clamped to it; a NaN tap makes the output NaN. f64 per pixel, f32 result.
//
// Memory layout: `src` is `[src_height][src_width]` f32; `out` is `[height][width]` f32;
// `m` is the transform, 9 f64 row-major (m[3·row + column]) in device memory.
//
// Launch geometry: 2-D grid of 2-D blocks (e.g. 32×8), thread (x, y) = output pixel.
//
// Agreement: bilinear is bit-identical (--fmad=false, same expression order). Lanczos-3 uses
// the device sin(), which may differ from the CPU's libm in the last ulp of f64: results
// agree to ~1e-12 relative before rounding to f32.

#include "common.cuh"

#define AW_PI 3.14159265358979323846

__device__ __forceinline__ double tap(const float* src, int sw, int sh, i64 x, i64 y) {
    const i64 cx = x < 0 ? 0 : (x > sw - 1 ? sw - 1 : x);
    const i64 cy = y < 0 ? 0 : (y > sh - 1 ? sh - 1 : y);
    return (double)src[cy * (i64)sw + cx];
}

// The source position of output pixel (x, y); false when outside the source.
__device__ __forceinline__ bool source_position(const double* m, int sw, int sh, int x, int y,
                                                double& sx, double& sy) {
    const double fx = (double)x, fy = (double)y;
    const double w = m[6] * fx + m[7] * fy + m[8];
    sx = (m[0] * fx + m[1] * fy + m[2]) / w;
    sy = (m[3] * fx + m[4] * fy + m[5]) / w;
    return sx >= 0.0 && sy >= 0.0 && sx <= (double)(sw - 1) && sy <= (double)(sh - 1);
}

// The interpolated value at source position (sx, sy), inside the source.
typedef double (*Sample)(const float* src, int sw, int sh, double sx, double sy);

// One thread per output pixel: the source position by `m`, NaN outside the source, else the
// value `sample` interpolates there.
template <Sample sample>
__device__ __forceinline__ void warp_pixel(const float* __restrict__ src, int src_width,
                                           int src_height, const double* __restrict__ m,
                                           float* __restrict__ out, int width, int height) {
    const int x = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    if (x >= width || y >= height) return;
    double sx, sy;
    float value = AW_NAN_F;
    if (source_position(m, src_width, src_height, x, y, sx, sy)) {
        value = (float)sample(src, src_width, src_height, sx, sy);
    }
    out[(u64)y * (u64)width + (u64)x] = value;
}

__device__ double bilinear(const float* src, int sw, int sh, double sx, double sy) {
    const double x0f = floor(sx), y0f = floor(sy);
    const double fx = sx - x0f, fy = sy - y0f;
    const i64 x0 = (i64)x0f, y0 = (i64)y0f;
    const double top = tap(src, sw, sh, x0, y0) * (1.0 - fx) + tap(src, sw, sh, x0 + 1, y0) * fx;
    const double bottom =
        tap(src, sw, sh, x0, y0 + 1) * (1.0 - fx) + tap(src, sw, sh, x0 + 1, y0 + 1) * fx;
    return top * (1.0 - fy) + bottom * fy;
}

// CPU oracle: crate::science::warp::lanczos3
__device__ __forceinline__ double lanczos3(double t) {
    if (t == 0.0) return 1.0;
    if (fabs(t) >= 3.0) return 0.0;
    const double p = AW_PI * t;
    return 3.0 * sin(p) * sin(p / 3.0) / (p * p);
}

// 6×6 taps weighted by sinc(t)·sinc(t/3), normalised by the weight sums, then clamped to the
// range of the 2×2 nearest source pixels (when finite).
__device__ double lanczos3_clamped(const float* src, int sw, int sh, double sx, double sy) {
    const i64 x0 = (i64)floor(sx), y0 = (i64)floor(sy);
    double wx[6], wy[6];
    double sum_x = 0.0, sum_y = 0.0;
    for (int i = 0; i < 6; ++i) {
        wx[i] = lanczos3(sx - (double)(x0 - 2 + i));
        wy[i] = lanczos3(sy - (double)(y0 - 2 + i));
    }
    for (int i = 0; i < 6; ++i) sum_x += wx[i];
    for (int i = 0; i < 6; ++i) sum_y += wy[i];
    double acc = 0.0;
    for (int j = 0; j < 6; ++j) {
        double row = 0.0;
        for (int i = 0; i < 6; ++i) row += wx[i] * tap(src, sw, sh, x0 - 2 + i, y0 - 2 + j);
        acc += wy[j] * row;
    }
    double v = acc / (sum_x * sum_y);
    if (is_finite_d(v)) {
        const double n0 = tap(src, sw, sh, x0, y0), n1 = tap(src, sw, sh, x0 + 1, y0);
        const double n2 = tap(src, sw, sh, x0, y0 + 1), n3 = tap(src, sw, sh, x0 + 1, y0 + 1);
        const double lo = fmin(fmin(fmin(n0, n1), n2), n3);
        const double hi = fmax(fmax(fmax(n0, n1), n2), n3);
        v = v < lo ? lo : (v > hi ? hi : v);
    }
    return v;
}

// CPU oracle: crate::science::warp::warp (Interpolation::Bilinear)
extern "C" __global__ void warp_bilinear(const float* __restrict__ src, int src_width,
                                         int src_height, const double* __restrict__ m,
                                         float* __restrict__ out, int width, int height) {
    warp_pixel<bilinear>(src, src_width, src_height, m, out, width, height);
}

// CPU oracle: crate::science::warp::warp (Interpolation::Lanczos3; `separable`)
extern "C" __global__ void warp_lanczos3(const float* __restrict__ src, int src_width,
                                         int src_height, const double* __restrict__ m,
                                         float* __restrict__ out, int width, int height) {
    warp_pixel<lanczos3_clamped>(src, src_width, src_height, m, out, width, height);
}
