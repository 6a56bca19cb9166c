// Debayer (demosaic) kernels: bilinear, superpixel and RCD (Ratio Corrected Demosaicing).
//
// Definitions: src/science/cfa.rs (module docs, `Mosaic::bilinear_pixel`,
// `Mosaic::superpixel`, `RcdKernel`), ported expression by expression in f32 and compiled
// with --fmad=false, so the results are bit-identical to the CPU.
//
// Memory layout
// - `mosaic`: the whole `[height][width]` f32 CFA plane (NaN = missing pixel).
// - `colors`: the Bayer pattern code of common.cuh (RGGB 0x94, BGGR 0x16, GRBG 0x61,
//   GBRG 0x49), for the image as stored.
// - Output `out`: `[3][height][width]` f32 planes in R, G, B order (superpixel:
//   `[3][height/2][width/2]`, an odd last row/column dropped).
// - RCD scratch planes are whole `[height][width]` f32 planes (u8 for the `near` flags),
//   allocated by the launcher; every RCD kernel writes every pixel of its planes (NaN where
//   the CPU leaves NaN: outside the step's margin, or at pixels the step does not compute).
//
// Launch geometry: 2-D grid of 2-D blocks (e.g. 32×8), thread (x, y) = pixel (column, row)
// (superpixel: one thread per output cell); threads outside the image return.
//
// RCD sequence (one launch each, in this order; `scale` = max finite |value| of the mosaic,
// at least FLT_MIN, e.g. from stats_absmax_f32 in kernels/stats.cu):
//   1. debayer_rcd_near_rows, debayer_rcd_near_cols  → near (non-finite within 10 pixels)
//   2. debayer_rcd_high_pass                          → hp_v, hp_h, hp_p, hp_q
//   3. debayer_rcd_statistics                         → vh, pq, low_pass
//   4. debayer_rcd_green                              → green
//   5. debayer_rcd_opposite                           → opposite
//   6. debayer_rcd_finish                             → out

#include "common.cuh"

#define AW_RCD_RADIUS 10
#define AW_RCD_EPS 1e-5f

__device__ __forceinline__ bool pixel_of_thread(int width, int height, int& x, int& y) {
    x = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    y = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    return x < width && y < height;
}

// Bilinear at (x, y): the own colour is the value; each other colour the f32 mean of the
// finite neighbours of that colour among the 8 that exist, summed in scan order; NaN if none.
// CPU oracle: crate::science::cfa::Mosaic::bilinear_pixel (private; via cfa::debayer)
__device__ void bilinear_pixel(const float* m, int width, int height, u32 colors, int x, int y,
                               float rgb[3]) {
    float sum[3] = {0.0f, 0.0f, 0.0f};
    u32 count[3] = {0u, 0u, 0u};
    for (int dy = -1; dy <= 1; ++dy) {
        for (int dx = -1; dx <= 1; ++dx) {
            const int nx = x + dx, ny = y + dy;
            if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
            const float v = m[(u64)ny * (u64)width + (u64)nx];
            if (is_finite_f(v) && !(dx == 0 && dy == 0)) {
                const int c = cfa_color(colors, nx, ny);
                sum[c] += v;
                count[c] += 1;
            }
        }
    }
    const int own = cfa_color(colors, x, y);
    for (int c = 0; c < 3; ++c) {
        if (c == own) {
            rgb[c] = m[(u64)y * (u64)width + (u64)x];
        } else if (count[c] == 0) {
            rgb[c] = AW_NAN_F;
        } else {
            rgb[c] = sum[c] / (float)count[c];
        }
    }
}

__device__ __forceinline__ void store_rgb(float* out, u64 plane, u64 i, const float rgb[3]) {
    out[i] = rgb[0];
    out[plane + i] = rgb[1];
    out[2 * plane + i] = rgb[2];
}

// CPU oracle: crate::science::cfa::debayer (DebayerMethod::Bilinear)
extern "C" __global__ void debayer_bilinear(const float* __restrict__ mosaic, int width,
                                            int height, u32 colors, float* __restrict__ out) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    float rgb[3];
    bilinear_pixel(mosaic, width, height, colors, x, y, rgb);
    store_rgb(out, (u64)width * (u64)height, (u64)y * (u64)width + (u64)x, rgb);
}

// One thread per output cell (cx, cy) of the `[3][height/2][width/2]` output: R and B are the
// cell's red and blue pixels, G the f32 mean of its finite greens (NaN when both are missing).
// CPU oracle: crate::science::cfa::debayer (DebayerMethod::Superpixel)
extern "C" __global__ void debayer_superpixel(const float* __restrict__ mosaic, int width,
                                              int height, u32 colors, float* __restrict__ out) {
    const int ow = width / 2, oh = height / 2;
    int cx, cy;
    if (!pixel_of_thread(ow, oh, cx, cy)) return;
    float r = 0.0f, b = 0.0f, green = 0.0f;
    u32 greens = 0;
    for (int k = 0; k < 4; ++k) {
        const int x = 2 * cx + (k & 1), y = 2 * cy + (k >> 1);
        const float v = mosaic[(u64)y * (u64)width + (u64)x];
        const int c = cfa_color(colors, x, y);
        if (c == 0) {
            r = v;
        } else if (c == 2) {
            b = v;
        } else if (is_finite_f(v)) {
            green += v;
            greens += 1;
        }
    }
    const float rgb[3] = {r, greens == 0 ? AW_NAN_F : green / (float)greens, b};
    store_rgb(out, (u64)ow * (u64)oh, (u64)cy * (u64)ow + (u64)cx, rgb);
}

// ---------------------------------------------------------------------------------------
// RCD. `i` is a linear index, offsets are dy · width + dx (`shifted` in cfa.rs).

__device__ __forceinline__ bool in_margin(int x, int y, int width, int height, int margin) {
    return x >= margin && x < width - margin && y >= margin && y + margin < height;
}

__device__ __forceinline__ bool is_site(u32 colors, int x, int y) {
    return cfa_color(colors, x, y) != 1;
}

// CPU oracle: crate::science::cfa::squared_high_pass
__device__ __forceinline__ float squared_high_pass(const float* d, i64 i, i64 step, float unit) {
    const float taps[7] = {1.0f, -3.0f, -1.0f, 6.0f, -1.0f, -3.0f, 1.0f};
    float hp = taps[0] * d[i - 3 * step];
    for (int k = 1; k < 7; ++k) hp += taps[k] * d[i + (i64)(k - 3) * step];
    const float a = hp * unit;
    return a * a;
}

// CPU oracle: crate::science::cfa::discrimination
__device__ __forceinline__ float discrimination(const float* a, const float* b, i64 i,
                                                i64 step_a, i64 step_b) {
    const float eps2 = AW_RCD_EPS * AW_RCD_EPS;
    const float sa = fmaxf(a[i - step_a] + a[i] + a[i + step_a], eps2);
    const float sb = fmaxf(b[i - step_b] + b[i] + b[i + step_b], eps2);
    return sa / (sa + sb);
}

// CPU oracle: crate::science::cfa::low_pass
__device__ __forceinline__ float low_pass(const float* d, i64 i, i64 w) {
    return 0.25f * d[i] + 0.125f * (d[i - w] + d[i + w] + d[i - 1] + d[i + 1]) +
           0.0625f * (d[i - w - 1] + d[i - w + 1] + d[i + w - 1] + d[i + w + 1]);
}

// CPU oracle: crate::science::cfa::refined
__device__ __forceinline__ float refined(const float* s, i64 i, i64 w) {
    const float own = s[i];
    const float around = 0.25f * (s[i - w - 1] + s[i - w + 1] + s[i + w - 1] + s[i + w + 1]);
    return fabsf(0.5f - own) < fabsf(0.5f - around) ? around : own;
}

struct Side {
    float estimate;
    float gradient;
};

// CPU oracle: crate::science::cfa::ratio_side
__device__ __forceinline__ Side ratio_side(const float* d, const float* lp, i64 i, i64 t,
                                           float eps) {
    const float here = lp[i], there = lp[i + 2 * t];
    Side s;
    s.estimate = d[i + t] * (1.0f + (here - there) / (eps + fabsf(here) + fabsf(there)));
    s.gradient = eps + fabsf(d[i + t] - d[i - t]) + fabsf(d[i] - d[i + 2 * t]) +
                 fabsf(d[i + t] - d[i + 3 * t]) + fabsf(d[i + 2 * t] - d[i + 4 * t]);
    return s;
}

// CPU oracle: crate::science::cfa::difference_side
__device__ __forceinline__ Side difference_side(const float* c, const float* g, i64 i, i64 t,
                                                float eps) {
    Side s;
    s.gradient = eps + fabsf(c[i + t] - c[i - t]) + fabsf(c[i + t] - c[i + 3 * t]) +
                 fabsf(g[i] - g[i + 2 * t]);
    s.estimate = c[i + t] - g[i + t];
    return s;
}

// CPU oracle: crate::science::cfa::blend
__device__ __forceinline__ float blend(Side a, Side b) {
    return a.estimate + a.gradient / (a.gradient + b.gradient) * (b.estimate - a.estimate);
}

// near_rows[i] = a non-finite value lies in row y within `radius` columns of x.
// CPU oracle: crate::science::cfa::near_nonfinite (row pass)
extern "C" __global__ void debayer_rcd_near_rows(const float* __restrict__ mosaic, int width,
                                                 int height, int radius,
                                                 u8* __restrict__ near_rows) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const u64 row = (u64)y * (u64)width;
    u8 near = 0;
    const int x0 = x - radius < 0 ? 0 : x - radius;
    const int x1 = x + radius >= width ? width - 1 : x + radius;
    for (int nx = x0; nx <= x1; ++nx) near |= is_finite_f(mosaic[row + nx]) ? 0 : 1;
    near_rows[row + x] = near;
}

// near[i] = near_rows within `radius` rows of y (Chebyshev distance ≤ radius overall).
// CPU oracle: crate::science::cfa::near_nonfinite (column pass)
extern "C" __global__ void debayer_rcd_near_cols(const u8* __restrict__ near_rows, int width,
                                                 int height, int radius, u8* __restrict__ near) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    u8 any = 0;
    const int y0 = y - radius < 0 ? 0 : y - radius;
    const int y1 = y + radius >= height ? height - 1 : y + radius;
    for (int ny = y0; ny <= y1; ++ny) any |= near_rows[(u64)ny * (u64)width + x];
    near[(u64)y * (u64)width + x] = any;
}

// Step 1 high-pass planes (margin 3): vertical and horizontal everywhere, the diagonals
// (P: NW–SE, Q: NE–SW) at sites only; NaN elsewhere. `unit` = 1 / scale (f32).
// CPU oracle: crate::science::cfa::RcdKernel::new (the rcd_plane calls of squared_high_pass)
extern "C" __global__ void debayer_rcd_high_pass(const float* __restrict__ mosaic, int width,
                                                 int height, u32 colors, float unit,
                                                 float* __restrict__ hp_v,
                                                 float* __restrict__ hp_h,
                                                 float* __restrict__ hp_p,
                                                 float* __restrict__ hp_q) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const i64 w = width, i = (i64)y * w + x;
    float v = AW_NAN_F, h = AW_NAN_F, p = AW_NAN_F, q = AW_NAN_F;
    if (in_margin(x, y, width, height, 3)) {
        v = squared_high_pass(mosaic, i, w, unit);
        h = squared_high_pass(mosaic, i, 1, unit);
        if (is_site(colors, x, y)) {
            p = squared_high_pass(mosaic, i, w + 1, unit);
            q = squared_high_pass(mosaic, i, w - 1, unit);
        }
    }
    hp_v[i] = v;
    hp_h[i] = h;
    hp_p[i] = p;
    hp_q[i] = q;
}

// Step 1 discriminations (margin 4): vh everywhere, pq at sites; step 2 low-pass (margin 1)
// at sites. NaN elsewhere.
// CPU oracle: crate::science::cfa::RcdKernel::new (vh, pq and low_pass planes)
extern "C" __global__ void debayer_rcd_statistics(
    const float* __restrict__ mosaic, const float* __restrict__ hp_v,
    const float* __restrict__ hp_h, const float* __restrict__ hp_p,
    const float* __restrict__ hp_q, int width, int height, u32 colors, float* __restrict__ vh,
    float* __restrict__ pq, float* __restrict__ low) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const i64 w = width, i = (i64)y * w + x;
    const bool site = is_site(colors, x, y);
    float a = AW_NAN_F, b = AW_NAN_F, c = AW_NAN_F;
    if (in_margin(x, y, width, height, 4)) {
        a = discrimination(hp_v, hp_h, i, w, 1);
        if (site) b = discrimination(hp_p, hp_q, i, w + 1, w - 1);
    }
    if (site && in_margin(x, y, width, height, 1)) c = low_pass(mosaic, i, w);
    vh[i] = a;
    pq[i] = b;
    low[i] = c;
}

// Step 3 (margin 5): green, measured or ratio-corrected at sites; NaN outside the margin.
// CPU oracle: crate::science::cfa::RcdKernel::new (green plane)
extern "C" __global__ void debayer_rcd_green(const float* __restrict__ mosaic,
                                             const float* __restrict__ low,
                                             const float* __restrict__ vh, int width,
                                             int height, u32 colors, float eps,
                                             float* __restrict__ green) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const i64 w = width, i = (i64)y * w + x;
    float g = AW_NAN_F;
    if (in_margin(x, y, width, height, 5)) {
        if (!is_site(colors, x, y)) {
            g = mosaic[i];
        } else {
            const float vertical =
                blend(ratio_side(mosaic, low, i, -w, eps), ratio_side(mosaic, low, i, w, eps));
            const float horizontal =
                blend(ratio_side(mosaic, low, i, -1, eps), ratio_side(mosaic, low, i, 1, eps));
            g = vertical + refined(vh, i, w) * (horizontal - vertical);
        }
    }
    green[i] = g;
}

// Step 4 (margin 7, sites only): blue at red sites, red at blue sites; NaN elsewhere.
// CPU oracle: crate::science::cfa::RcdKernel::new (opposite plane)
extern "C" __global__ void debayer_rcd_opposite(const float* __restrict__ mosaic,
                                                const float* __restrict__ green,
                                                const float* __restrict__ pq, int width,
                                                int height, u32 colors, float eps,
                                                float* __restrict__ opposite) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const i64 w = width, i = (i64)y * w + x;
    float o = AW_NAN_F;
    if (in_margin(x, y, width, height, 7) && is_site(colors, x, y)) {
        const float p = blend(difference_side(mosaic, green, i, -(w + 1), eps),
                              difference_side(mosaic, green, i, w + 1, eps));
        const float q = blend(difference_side(mosaic, green, i, -(w - 1), eps),
                              difference_side(mosaic, green, i, w - 1, eps));
        o = green[i] + p + refined(pq, i, w) * (q - p);
    }
    opposite[i] = o;
}

// Step 5 and output: measured values kept, steps 3–4 at sites, step 5 at greens, bilinear
// within RCD_RADIUS (10) of the border or of a non-finite value (`near`).
// CPU oracle: crate::science::cfa::RcdKernel::pixel
extern "C" __global__ void debayer_rcd_finish(const float* __restrict__ mosaic,
                                              const float* __restrict__ vh,
                                              const float* __restrict__ green,
                                              const float* __restrict__ opposite,
                                              const u8* __restrict__ near, int width,
                                              int height, u32 colors, float eps,
                                              float* __restrict__ out) {
    int x, y;
    if (!pixel_of_thread(width, height, x, y)) return;
    const i64 w = width, i = (i64)y * w + x;
    const u64 plane = (u64)width * (u64)height;
    float rgb[3];
    const int r = AW_RCD_RADIUS;
    const bool inside = x >= r && y >= r && x + r < width && y + r < height;
    if (!inside || near[i]) {
        bilinear_pixel(mosaic, width, height, colors, x, y, rgb);
        store_rgb(out, plane, (u64)i, rgb);
        return;
    }
    const float value = mosaic[i];
    const int own = cfa_color(colors, x, y);
    if (own == 0) {
        rgb[0] = value;
        rgb[1] = green[i];
        rgb[2] = opposite[i];
    } else if (own == 2) {
        rgb[0] = opposite[i];
        rgb[1] = green[i];
        rgb[2] = value;
    } else {
        const float d = refined(vh, i, w);
        // In the pixel's row (read along the column from `opposite`, along the row from the
        // mosaic), then in its column (the other way round).
        float est[2];
        for (int k = 0; k < 2; ++k) {
            const float* column = k == 0 ? opposite : mosaic;
            const float* row = k == 0 ? mosaic : opposite;
            const float vertical = blend(difference_side(column, green, i, -w, eps),
                                         difference_side(column, green, i, w, eps));
            const float horizontal = blend(difference_side(row, green, i, -1, eps),
                                           difference_side(row, green, i, 1, eps));
            est[k] = value + vertical + d * (horizontal - vertical);
        }
        const bool red_in_row = cfa_color(colors, x + 1, y) == 0;
        rgb[0] = red_in_row ? est[0] : est[1];
        rgb[1] = value;
        rgb[2] = red_in_row ? est[1] : est[0];
    }
    store_rgb(out, plane, (u64)i, rgb);
}
