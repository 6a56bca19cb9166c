// Calibration kernels: raw upload conversion, bias/dark/flat application, cosmetic correction.
//
// Memory layout
// - A tile ("band") holds rows `row0 .. row0 + rows` of N frames: `frames[n][rows][width]` f32,
//   contiguous (frame f starts at f · rows · width).
// - Masters (bias, dark, flat) are whole `[height][width]` f32 planes; the band reads their
//   rows `row0 + r`. Any master pointer may be null (absent).
// - Raw uploads are `u16` words, converted once to f32 by `calibrate_u16_to_f32`.
//
// Launch geometry: 1-D grids of 1-D blocks (e.g. 256 threads) with grid-stride loops over the
// elements; any grid size is correct.
//
// Arithmetic is f32, in the CPU's order, compiled with --fmad=false: the results are
// bit-identical to the CPU.

#include "common.cuh"

// Dark terms per frame (`DarkTerm` in src/science/calibrate.rs, resolved on the host by
// `dark_term`, which also reports the errors: missing exposure, scaling without a bias).
#define AW_DARK_BIAS_ONLY 0  // x − b (b = 0 without a bias)
#define AW_DARK_WHOLE 1      // x − d
#define AW_DARK_THERMAL 2    // x − b − (d − b) · s, s = t_light / t_dark (f32)

// Raw 16-bit words → f32 physical values, `count` elements.
// flags bit 0: the words are FITS stored big-endian i16 with BZERO 32768 (byte-swap, then flip
// the sign bit: `stored_to_u16` in src/fits/direct.rs); otherwise native unsigned values.
// The conversion u16 → f32 is exact.
// CPU oracle: crate::fits::direct (stored_to_u16 + `as f32`)
extern "C" __global__ void calibrate_u16_to_f32(const u16* __restrict__ src,
                                                float* __restrict__ dst, u64 count, u32 flags) {
    for (u64 i = global_thread(); i < count; i += global_threads()) {
        u32 w = src[i];
        if (flags & 1u) {
            w = (((w & 0xffu) << 8) | (w >> 8)) ^ 0x8000u;
        }
        dst[i] = (float)w;
    }
}

// Calibrates a band of N frames in place:
//   BiasOnly: x − b;  Whole: x − d;  Thermal(s): x − b − (d − b) · s
//   then, with a flat f: x / f when f is finite and > 0, else NaN.
// `terms[f]` is frame f's AW_DARK_* term and `scales[f]` its s (read for THERMAL only);
// `bias`, `dark`, `flat` are `[height][width]` masters (null = absent; WHOLE/THERMAL need a
// dark, THERMAL a bias — checked on the host). The masters must have at least row0 + rows rows.
// CPU oracle: crate::science::calibrate::apply_rows
extern "C" __global__ void calibrate_apply(float* __restrict__ frames, int n, int rows,
                                           int width, int row0, const float* __restrict__ bias,
                                           const float* __restrict__ dark,
                                           const float* __restrict__ flat,
                                           const int* __restrict__ terms,
                                           const float* __restrict__ scales) {
    const u64 plane = (u64)rows * (u64)width;
    const u64 total = plane * (u64)n;
    for (u64 i = global_thread(); i < total; i += global_threads()) {
        const int f = (int)(i / plane);
        const u64 p = i - (u64)f * plane;
        const u64 m = (u64)row0 * (u64)width + p;  // index in the full-frame masters
        const float v = frames[i];
        const float b = bias ? bias[m] : 0.0f;
        const int term = terms[f];
        float value;
        if (term == AW_DARK_WHOLE && dark) {
            value = v - dark[m];
        } else if (term == AW_DARK_THERMAL && dark) {
            value = v - b - (dark[m] - b) * scales[f];
        } else {
            value = v - b;
        }
        if (flat) {
            const float fl = flat[m];
            value = (is_finite_f(fl) && fl > 0.0f) ? value / fl : AW_NAN_F;
        }
        frames[i] = value;
    }
}

// Cosmetic correction of a whole `[height][width]` frame in place: every pixel with
// `defects[p] != 0` becomes the median of its same-colour neighbours (the 8 at distance
// `step`: 2 in a CFA mosaic, 1 in a mono frame) that are inside the frame, finite and not
// defective; NaN when there is none. One thread per pixel (grid-stride).
// In place is race-free: only defective pixels are written and only non-defective ones read.
// `replaced` (nullable) counts the defects given a finite value (atomicAdd: the count is
// exact, whatever the order).
// CPU oracle: crate::science::calibrate::correct_defects
extern "C" __global__ void calibrate_correct_defects(float* __restrict__ frame, int height,
                                                     int width, const u8* __restrict__ defects,
                                                     int step, u32* __restrict__ replaced) {
    const u64 total = (u64)height * (u64)width;
    for (u64 i = global_thread(); i < total; i += global_threads()) {
        if (!defects[i]) continue;
        const int y = (int)(i / (u64)width);
        const int x = (int)(i - (u64)y * (u64)width);
        float values[8];
        int count = 0;
        for (int dy = -step; dy <= step; dy += step) {
            for (int dx = -step; dx <= step; dx += step) {
                const int nx = x + dx, ny = y + dy;
                if ((dx == 0 && dy == 0) || nx < 0 || ny < 0 || nx >= width || ny >= height) {
                    continue;
                }
                const u64 j = (u64)ny * (u64)width + (u64)nx;
                const float v = frame[j];
                if (is_finite_f(v) && !defects[j]) values[count++] = v;
            }
        }
        float value = AW_NAN_F;
        if (count > 0) {
            insertion_sort(values, count);
            // `stats::median_in_place`: f64 mean of the two middle values, rounded to f32.
            value = (float)sorted_median_f(values, count);
        }
        frame[i] = value;
        if (replaced && is_finite_f(value)) atomicAdd(replaced, 1u);
    }
}

// Subtracts an offset plane and divides by per-cell levels, for combining flats: for each of
// the N frames of a band, x ← (x − offset[row0 + r][x]) / levels[f][cfa_cell(x, row0 + r)].
// `offset` (a full `[height][width]` plane) and `levels` (`[n][4]` f32) are nullable.
// CPU oracle: crate::science::calibrate::combine_band (the preparation loop before stacking)
extern "C" __global__ void calibrate_prepare_flats(float* __restrict__ frames, int n, int rows,
                                                  int width, int row0,
                                                  const float* __restrict__ offset,
                                                  const float* __restrict__ levels) {
    const u64 plane = (u64)rows * (u64)width;
    const u64 total = plane * (u64)n;
    for (u64 i = global_thread(); i < total; i += global_threads()) {
        const int f = (int)(i / plane);
        const u64 p = i - (u64)f * plane;
        const int r = (int)(p / (u64)width);
        const int x = (int)(p - (u64)r * (u64)width);
        float v = frames[i];
        if (offset) v -= offset[(u64)row0 * (u64)width + p];
        if (levels) v /= levels[4 * f + cfa_cell(x, row0 + r)];
        frames[i] = v;
    }
}
