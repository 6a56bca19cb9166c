"""Star FWHM and background noise of stacked images, measured the same way for every stacker.

Shared by tests/interop/test_siril_register.py and benches/register_bench.py, so that
astroworker's and Siril's registered stacks are judged by one ruler (and transforms by one
distance, `corner_distance`):

- The images are compared on their luminance (the sum of their colour planes) inside a box
  that every registered frame covers (`common_box`), so that the borders a dither uncovers,
  which each stacker fills in its own way (fewer frames, or zeros), are left out.
- Stars: local maxima at least 30 σ above the local background, with no other source within
  12 px, found in each image on its own and kept when they are found in all of them (within
  1.5 px), unsaturated in all of them (no plane of the star above 80 % of full scale) and fitted
  in all of them. Every image is measured on the same stars.
- FWHM: an elliptical Gaussian fitted to the pixels above 10 % of the star's peak by weighted
  least squares on the logarithm (Guo's method: closed form, weights I²), reported as the
  geometric mean of the two axes; the median over the stars.
- Flux: an 8-px-radius aperture sum minus the median of the 10–14 px annulus.
- Background noise, relative to the median star flux of the same stars (stackers differ in
  scale: Siril writes ADU / 65535), after subtracting a 64-px tile-median background:
  - `noise_rel`: the robust σ (1.4826 × MAD) of the same 8-px aperture's sums laid on a grid
    over the image (most fall on empty sky), over the median star flux: the inverse S/N of the
    median star. This is the fair comparison: a resampling kernel that low-pass filters the
    frames lowers the pixel-to-pixel noise while it widens the stars, and leaves the noise at
    the scale of a star (what its S/N depends on) nearly unchanged;
  - `pixel_noise_rel`: the per-pixel robust σ (per 64-px tile, median over the tiles) over the
    median star flux, reported to show that trade-off.
"""

import numpy as np
from astropy.io import fits
from numpy.lib.stride_tricks import sliding_window_view

TILE = 64
DETECT_SIGMA = 30.0
ISOLATION_PX = 12
MATCH_PX = 1.5
FIT_RADIUS = 5
APERTURE_PX = 8
ANNULUS_PX = (10, 14)
SATURATION = 0.8


def load_planes(path):
    """The image's planes as float64 (C, H, W) and its full scale (1.0 for data normalised to
    [0, 1] as Siril writes float stacks, else 65535)."""
    data = fits.getdata(path).astype(np.float64)
    planes = data[None] if data.ndim == 2 else data
    return planes, 1.0 if np.nanmax(planes) <= 1.0 else 65535.0


def common_box(transforms, width, height, margin=16):
    """(y0, y1, x0, x1): the rectangle of the reference frame that every frame covers, less a
    margin for the interpolation kernels. `transforms` map frame pixels to reference pixels."""
    x0, y0, x1, y1 = 0.0, 0.0, width - 1.0, height - 1.0
    for t in transforms:
        t = np.asarray(t, np.float64)
        corners = t @ np.array([[0, width - 1, 0, width - 1], [0, 0, height - 1, height - 1],
                                [1, 1, 1, 1]], np.float64)
        xs, ys = corners[0] / corners[2], corners[1] / corners[2]
        x0, x1 = max(x0, xs[0], xs[2]), min(x1, xs[1], xs[3])
        y0, y1 = max(y0, ys[0], ys[1]), min(y1, ys[2], ys[3])
    return (int(np.ceil(y0)) + margin, int(np.floor(y1)) + 1 - margin,
            int(np.ceil(x0)) + margin, int(np.floor(x1)) + 1 - margin)


def corner_distance(a, b, width, height):
    """The largest distance between where transforms `a` and `b` (3×3, frame pixel → reference
    pixel) send the frame's four corners and its centre."""
    points = np.array([[0, width - 1, 0, width - 1, (width - 1) / 2],
                       [0, 0, height - 1, height - 1, (height - 1) / 2], [1, 1, 1, 1, 1]], np.float64)
    pa, pb = np.asarray(a, np.float64) @ points, np.asarray(b, np.float64) @ points
    return float(np.max(np.hypot(*(pa[:2] / pa[2] - pb[:2] / pb[2]))))


def background(lum):
    """Tile-median background (blocky, TILE px) and the per-pixel noise (median over tiles of
    1.4826 × MAD) of a luminance image whose sides are multiples of TILE."""
    h, w = lum.shape
    tiles = lum.reshape(h // TILE, TILE, w // TILE, TILE).transpose(0, 2, 1, 3).reshape(h // TILE, w // TILE, -1)
    med = np.median(tiles, axis=2)
    mad = np.median(np.abs(tiles - med[..., None]), axis=2)
    return np.repeat(np.repeat(med, TILE, 0), TILE, 1), float(np.median(1.4826 * mad))


def find_stars(lum, bg, noise):
    """(x, y) of the bright isolated peaks of a background-subtracted luminance."""
    signal = lum - bg
    r = ISOLATION_PX
    win = sliding_window_view(np.pad(signal, 2, constant_values=-np.inf), (5, 5)).max(axis=(2, 3))
    peaks = np.argwhere((signal == win) & (signal > 5 * noise))
    bright = peaks[signal[peaks[:, 0], peaks[:, 1]] > DETECT_SIGMA * noise]
    h, w = lum.shape
    keep = []
    for y, x in bright:
        if not (r <= y < h - r and r <= x < w - r):
            continue
        d2 = np.sum((peaks - (y, x)) ** 2, axis=1)
        if np.count_nonzero(d2 <= r * r) == 1:
            keep.append((x, y))
    return np.array(keep, np.float64).reshape(-1, 2)


def fit_star(lum, planes, x, y, full_scale):
    """(fwhm, flux) of the star peaking at integer (x, y), or None when it is saturated or no
    Gaussian fits it."""
    x, y = int(x), int(y)
    r_out = ANNULUS_PX[1]
    if 2 <= y < lum.shape[0] - 2 and 2 <= x < lum.shape[1] - 2:  # recentre on this image's peak
        dy, dx = np.unravel_index(np.argmax(lum[y - 2:y + 3, x - 2:x + 3]), (5, 5))
        x, y = x + dx - 2, y + dy - 2
    if not (r_out <= y < lum.shape[0] - r_out and r_out <= x < lum.shape[1] - r_out):
        return None
    box = np.s_[y - r_out:y + r_out + 1, x - r_out:x + r_out + 1]
    if planes[(slice(None), *box)][:, r_out - 3:r_out + 4, r_out - 3:r_out + 4].max() >= SATURATION * full_scale:
        return None
    cut = lum[box]
    yy, xx = np.mgrid[-r_out:r_out + 1, -r_out:r_out + 1]
    rr = np.hypot(xx, yy)
    sky = np.median(cut[(rr >= ANNULUS_PX[0]) & (rr <= ANNULUS_PX[1])])
    star = cut - sky
    flux = float(star[rr <= APERTURE_PX].sum())
    use = (rr <= FIT_RADIUS) & (star > 0.1 * star[r_out, r_out])
    if np.count_nonzero(use) < 9:
        return None
    i, u, v = star[use], xx[use].astype(np.float64), yy[use].astype(np.float64)
    design = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], axis=1) * i[:, None]
    coef, *_ = np.linalg.lstsq(design, np.log(i) * i, rcond=None)
    inv_cov = -2 * np.array([[coef[3], coef[5] / 2], [coef[5] / 2, coef[4]]])
    if np.any(np.linalg.eigvalsh(inv_cov) <= 0):
        return None
    fwhm = 2 * np.sqrt(2 * np.log(2)) * np.linalg.det(inv_cov) ** -0.25
    return float(fwhm), flux


def aperture_noise(signal):
    """Robust σ of APERTURE_PX-radius aperture sums laid on a grid over a background-subtracted
    image."""
    d = 2 * APERTURE_PX + 1
    h, w = signal.shape
    blocks = signal[:h // d * d, :w // d * d].reshape(h // d, d, w // d, d)
    yy, xx = np.mgrid[-APERTURE_PX:APERTURE_PX + 1, -APERTURE_PX:APERTURE_PX + 1]
    sums = np.einsum("iajb,ab->ij", blocks, (np.hypot(xx, yy) <= APERTURE_PX).astype(np.float64))
    return float(1.4826 * np.median(np.abs(sums - np.median(sums))))


def shared_stars(found):
    """The stars of found[0] that every other list has within MATCH_PX."""
    stars = found[0]
    for other in found[1:]:
        if not len(other):
            return stars[:0]
        d = np.hypot(*(stars[:, None, :] - other[None, :, :]).transpose(2, 0, 1))
        stars = stars[d.min(axis=1) <= MATCH_PX]
    return stars


def compare(paths, box):
    """Per image (in the order of `paths`): the number of stars measured, their median FWHM and
    flux, `noise_rel` and `pixel_noise_rel`, inside `box` = (y0, y1, x0, x1) on the stars that
    every image shares."""
    y0, y1, x0, x1 = box
    y1 = y0 + (y1 - y0) // TILE * TILE
    x1 = x0 + (x1 - x0) // TILE * TILE
    images = []
    for path in paths:
        planes, full_scale = load_planes(path)
        planes = planes[:, y0:y1, x0:x1]
        lum = planes.sum(axis=0)
        bg, noise = background(lum)
        images.append({"planes": planes, "lum": lum, "full_scale": full_scale, "noise": noise,
                       "aperture_noise": aperture_noise(lum - bg), "stars": find_stars(lum, bg, noise)})
    stars = shared_stars([im["stars"] for im in images])
    fitted = [[fit_star(im["lum"], im["planes"], x, y, im["full_scale"]) for x, y in stars] for im in images]
    good = [k for k in range(len(stars)) if all(f[k] is not None for f in fitted)]
    results = []
    for im, f in zip(images, fitted):
        fwhm, flux = map(float, np.median([f[k] for k in good], axis=0)) if good else (np.nan, np.nan)
        results.append({"stars": len(good), "fwhm": fwhm, "flux": flux,
                        "noise_rel": im["aperture_noise"] / flux, "pixel_noise_rel": im["noise"] / flux})
    return results
