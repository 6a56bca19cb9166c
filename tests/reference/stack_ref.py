"""Independent numpy reference for the stacking kernels (src/science/stack.rs, stats.rs,
normalize.rs), used by tests/stack_reference.rs.

Everything is vectorised over pixels and follows the definitions in the Rust module docs;
sigma clipping goes through astropy's sigma_clip. Inputs are raw little-endian float32 files
written by the Rust test; results are printed as JSON (NaN as null).

    stack_ref.py stack DIR N H W SPEC...   DIR/frames.f32 (N, H, W), DIR/weights.f32 (N)
    stack_ref.py estimate DIR K H W        DIR/images.f32 (K, H, W)

A SPEC is NAME[:LOW:HIGH[:ITERATIONS]], the parameters being float32 values (as in Rust).
"""

import json
import sys
import warnings

import numpy as np
from astropy.stats import biweight_midvariance, sigma_clip

MAD_TO_SIGMA = 1.4826
WINSOR_MAX_STEPS = 1000


def f32(text):
    """A float32 parameter as the Rust side holds it, widened to float64."""
    return float(np.float32(text))


def weighted_mean(x, w, keep):
    """Σw·x/Σw over kept samples per pixel (axis 0); plain mean if Σw ≤ 0; NaN if none.
    `w` broadcasts against `x` (N, P)."""
    xk = np.where(keep, x, 0.0)
    wk = np.where(keep, w, 0.0)
    total = wk.sum(axis=0)
    weighted = (wk * xk).sum(axis=0)
    count = keep.sum(axis=0)
    plain = xk.sum(axis=0) / count
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain)


def iterate(x, iterations, min_count, bounds):
    """Rejection passes: `bounds(kept_data_with_nan)` gives per-pixel (low, high); samples
    outside are rejected. A pixel takes part in a pass while it has at least `min_count`
    samples; a pass rejecting every sample of a pixel is discarded there. Running a pass on a
    pixel whose previous pass rejected nothing changes nothing, so passes run globally."""
    keep = np.isfinite(x)
    for _ in range(iterations):
        active = keep.sum(axis=0) >= min_count
        if not active.any():
            break
        low, high = bounds(np.where(keep, x, np.nan))
        new = keep & (x >= low) & (x <= high)
        apply = active & (new.sum(axis=0) > 0)
        keep = np.where(apply, new, keep)
    return keep


def winsorized_bounds(low, high):
    def bounds(xm):
        c = np.nanmedian(xm, axis=0)
        s = np.nanstd(xm, axis=0, ddof=1)
        y = xm.copy()
        # Pixels with fewer than 3 samples take no pass: no need to converge.
        done = np.sum(np.isfinite(xm), axis=0) < 3
        for _ in range(WINSOR_MAX_STEPS):
            if done.all():
                break
            active = ~done
            s0 = s
            y = np.where(active, np.minimum(np.maximum(y, c - 1.5 * s0), c + 1.5 * s0), y)
            s = np.where(active, 1.134 * np.nanstd(y, axis=0, ddof=1), s)
            done = done | (active & (np.abs(s - s0) <= 5e-4 * s0))
        return c - low * s, c + high * s

    return bounds


def mad_bounds(low, high):
    def bounds(xm):
        c = np.nanmedian(xm, axis=0)
        s = MAD_TO_SIGMA * np.nanmedian(np.abs(xm - c), axis=0)
        return c - low * s, c + high * s

    return bounds


def percentile_bounds(low, high):
    def bounds(xm):
        c = np.nanmedian(xm, axis=0)
        zero = c == 0
        lo = np.where(zero, -np.inf, c - low * np.abs(c))
        hi = np.where(zero, np.inf, c + high * np.abs(c))
        return lo, hi

    return bounds


def linear_fit(x, w, low, high, iterations):
    """Returns (value, rejected) per pixel."""
    order = np.argsort(x, axis=0, kind="stable")  # NaN last; ties in frame order
    ys = np.take_along_axis(x, order, axis=0)
    ws = w[order]
    keep = np.isfinite(ys)
    finite = keep.sum(axis=0)
    for _ in range(iterations):
        n = keep.sum(axis=0)
        active = n >= 3
        if not active.any():
            break
        n = np.where(active, n, 1)  # placeholder for inactive pixels (not applied)
        rank = np.cumsum(keep, axis=0) - 1
        mean_i = (n - 1) / 2.0
        mean_y = np.where(keep, ys, 0.0).sum(axis=0) / n
        di = np.where(keep, rank - mean_i, 0.0)
        sxy = np.where(keep, di * (ys - mean_y), 0.0).sum(axis=0)
        sxx = (di * di).sum(axis=0)
        b = sxy / np.where(sxx > 0, sxx, 1.0)
        a = mean_y - b * mean_i
        fit = a + b * rank
        sigma = np.where(keep, np.abs(ys - fit), 0.0).sum(axis=0) / n
        new = keep & (fit - low * sigma <= ys) & (ys <= fit + high * sigma)
        apply = active & (new.sum(axis=0) > 0)
        keep = np.where(apply, new, keep)
    return weighted_mean(ys, ws, keep), finite - keep.sum(axis=0)


def stack(x, w, spec):
    """x: (N, P) float64 with NaN; w: (N,). Returns (value, rejected) per pixel."""
    name, *params = spec.split(":")
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    none_rejected = np.zeros(x.shape[1], dtype=np.int64)
    if name == "sum":
        return np.where(count > 0, np.where(finite, x, 0.0).sum(axis=0), np.nan), none_rejected
    if name == "mean":
        return weighted_mean(x, w[:, None], finite), none_rejected
    if name == "median":
        return np.nanmedian(x, axis=0), none_rejected
    if name == "linear_fit":
        return linear_fit(x, w, f32(params[0]), f32(params[1]), int(params[2]))
    if name == "sigma_clip":
        clipped = sigma_clip(
            x,
            sigma_lower=f32(params[0]),
            sigma_upper=f32(params[1]),
            maxiters=int(params[2]),
            cenfunc="median",
            stdfunc="std",
            axis=0,
            masked=True,
        )
        keep = ~np.ma.getmaskarray(clipped)
    elif name == "winsorized":
        keep = iterate(x, int(params[2]), 3, winsorized_bounds(f32(params[0]), f32(params[1])))
    elif name == "mad_clip":
        keep = iterate(x, int(params[2]), 3, mad_bounds(f32(params[0]), f32(params[1])))
    elif name == "percentile":
        keep = iterate(x, 1, 1, percentile_bounds(f32(params[0]), f32(params[1])))
    else:
        raise SystemExit(f"unknown method {name}")
    return weighted_mean(x, w[:, None], keep), count - keep.sum(axis=0)


def median_mad(v):
    m = np.median(v)
    return m, np.median(np.abs(v - m))


def ikss(v):
    """Siril's IKSSlite: location, scale."""
    m, mad = median_mad(v)
    kept = v[(v >= m - 6 * mad) & (v <= m + 6 * mad)]
    location, mad = median_mad(kept)
    if mad == 0:
        return location, 0.0
    d = kept - location
    u = d / (9 * mad)
    inside = np.abs(u) < 1
    num = np.sum((d * d * (1 - u * u) ** 4)[inside])
    den = np.sum(((1 - u * u) * (1 - 5 * u * u))[inside])
    bwmv = kept.size * num / den**2
    # Cross-check the hand-written BWMV with astropy's.
    astropy_bwmv = biweight_midvariance(kept, c=9.0, M=location, modify_sample_size=False)
    assert abs(bwmv - astropy_bwmv) <= 1e-9 * bwmv, (bwmv, astropy_bwmv)
    return location, 0.991 * np.sqrt(bwmv)


def coefficients(method, frame, reference):
    """(factor, offset) with x' = x·factor + offset; see normalize.rs for the guards."""
    (l, s), (l_ref, s_ref) = frame, reference
    usable = np.isfinite(s) and s > 0 and np.isfinite(s_ref) and s_ref > 0
    ratio = s_ref / s if usable else 1.0
    additive_ok = np.isfinite(l) and np.isfinite(l_ref)
    multiplicative_ok = additive_ok and l != 0 and l_ref != 0
    if method == "additive" and additive_ok:
        return 1.0, l_ref - l
    if method == "additive_scale" and additive_ok:
        return ratio, l_ref - l * ratio
    if method == "multiplicative" and multiplicative_ok:
        return l_ref / l, 0.0
    if method == "multiplicative_scale" and multiplicative_ok:
        return l_ref / l * ratio, 0.0
    return 1.0, 0.0


NORMALIZATIONS = ["none", "additive", "multiplicative", "additive_scale", "multiplicative_scale"]


def nan_to_none(values):
    return [None if not np.isfinite(v) else float(v) for v in values]


def main():
    warnings.simplefilter("ignore")  # all-NaN pixels, astropy's NaN notice
    command, directory = sys.argv[1], sys.argv[2]
    if command == "stack":
        n, h, wd = (int(a) for a in sys.argv[3:6])
        x = np.fromfile(f"{directory}/frames.f32", dtype="<f4").reshape(n, h * wd)
        x = x.astype(np.float64)
        w = np.fromfile(f"{directory}/weights.f32", dtype="<f4").astype(np.float64)
        results = []
        for spec in sys.argv[6:]:
            for weighted in (False, True):
                value, rejected = stack(x, w if weighted else np.ones(n), spec)
                results.append(
                    {
                        "spec": spec,
                        "weighted": weighted,
                        "value": nan_to_none(value),
                        "rejected": [int(r) for r in rejected],
                    }
                )
        json.dump(results, sys.stdout)
    elif command == "estimate":
        k, h, wd = (int(a) for a in sys.argv[3:6])
        images = np.fromfile(f"{directory}/images.f32", dtype="<f4").reshape(k, h * wd)
        out = {}
        for name, estimator in (("median_mad", median_mad), ("ikss", ikss)):
            estimates = []
            for image in images:
                v = image[np.isfinite(image)].astype(np.float64)
                location, scale = estimator(v)
                if name == "median_mad":
                    scale = MAD_TO_SIGMA * scale
                estimates.append((float(location), float(scale)))
            coeffs = {
                method: [coefficients(method, e, estimates[0]) for e in estimates]
                for method in NORMALIZATIONS
            }
            out[name] = {"estimates": estimates, "coefficients": coeffs}
        json.dump(out, sys.stdout)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
