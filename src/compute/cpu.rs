//! The CPU backend: the science kernels of `crate::science`, run with rayon.

use ndarray::{Array3, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::{BandJob, ChannelMap, Compute, ComputeError};
use crate::science::calibrate::apply_rows;
use crate::science::cfa::{self, BayerPattern, DebayerMethod};
use crate::science::normalize::Coefficients;
use crate::science::stack::stack_band;

#[derive(Debug, Default)]
pub struct Cpu;

impl Compute for Cpu {
    fn device(&self) -> String {
        "cpu".into()
    }

    fn stack_band(
        &self,
        job: BandJob<'_>,
        out: ArrayViewMut2<'_, f32>,
    ) -> Result<u64, ComputeError> {
        let BandJob {
            mut frames,
            row0,
            calibration,
            coefficients,
            channels,
            method,
            weights,
        } = job;
        frames
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .try_for_each(|(i, mut rows)| {
                if let Some(cal) = &calibration {
                    apply_rows(rows.view_mut(), row0, cal.masters, &cal.options[i])?;
                }
                normalize_rows(rows, row0, &coefficients[i], channels);
                Ok::<_, ComputeError>(())
            })?;
        Ok(stack_band(&method, frames.view(), weights, out))
    }

    fn debayer(
        &self,
        mosaic: ArrayView2<'_, f32>,
        pattern: BayerPattern,
        method: DebayerMethod,
    ) -> Result<Array3<f32>, ComputeError> {
        Ok(cfa::debayer(mosaic, pattern, method))
    }
}

/// `x' = x · factor + offset` with the coefficients of each pixel's channel; rows start at
/// image row `row0` (the channel of a CFA pixel depends on its absolute position).
pub fn normalize_rows(
    mut rows: ArrayViewMut2<'_, f32>,
    row0: usize,
    coefficients: &[Coefficients; 3],
    channels: ChannelMap,
) {
    for (r, mut row) in rows.outer_iter_mut().enumerate() {
        let y = row0 + r;
        // A row alternates between at most two channels: look them up once.
        let pair = [
            coefficients[channels.channel(0, y)],
            coefficients[channels.channel(1, y)],
        ];
        if pair[0] == Coefficients::IDENTITY && pair[1] == Coefficients::IDENTITY {
            continue;
        }
        for (x, v) in row.iter_mut().enumerate() {
            let c = pair[x % 2];
            *v = *v * c.factor + c.offset;
        }
    }
}
