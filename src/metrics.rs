//! Prometheus metrics of a worker, served as text by [`crate::http`] on `/metrics`.
//!
//! Task counters and runtimes are recorded by the worker as tasks move; queue depth, prefetch
//! in use and running tasks are read when scraped. Frames and pixels processed are counted by
//! the FITS jobs through process-wide counters ([`count_frames`]), since the science code does
//! not know the worker it runs in.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

static FRAMES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "astroworker_frames_processed_total",
        "FITS frames read by stacking and calibration jobs",
    )
    .expect("valid metric")
});
static PIXELS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "astroworker_pixels_processed_total",
        "Pixels of those frames (width × height × planes)",
    )
    .expect("valid metric")
});

/// Counts frames a job processed (and their pixels).
pub fn count_frames(frames: usize, pixels_per_frame: usize) {
    FRAMES.inc_by(frames as u64);
    PIXELS.inc_by((frames * pixels_per_frame) as u64);
}

/// How a task ended, for the counters.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Succeeded,
    Failed,
    Retried,
    Revoked,
}

pub struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    outcomes: IntCounterVec,
    runtime: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub prefetch_in_use: IntGauge,
    pub active: IntGauge,
    /// Per GPU (labels `gpu`, `name`), from NVML at each scrape.
    gpu: [GaugeVec; 5],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let received = IntCounterVec::new(
            Opts::new("astroworker_tasks_received_total", "Task messages received"),
            &["task"],
        )
        .expect("valid metric");
        let outcomes = IntCounterVec::new(
            Opts::new("astroworker_tasks_total", "Tasks finished, by outcome"),
            &["task", "outcome"],
        )
        .expect("valid metric");
        let runtime = HistogramVec::new(
            HistogramOpts::new("astroworker_task_runtime_seconds", "Task run time").buckets(vec![
                0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
            ]),
            &["task"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "astroworker_queue_depth",
                "Messages waiting in each consumed queue",
            ),
            &["queue"],
        )
        .expect("valid metric");
        let prefetch_in_use = IntGauge::new(
            "astroworker_prefetch_in_use",
            "Messages held unacked in the prefetch window",
        )
        .expect("valid metric");
        let active =
            IntGauge::new("astroworker_tasks_active", "Tasks running now").expect("valid metric");
        let gpu = [
            ("astroworker_gpu_memory_used_bytes", "GPU memory in use"),
            ("astroworker_gpu_memory_total_bytes", "GPU memory in all"),
            (
                "astroworker_gpu_utilization_ratio",
                "Share of time a kernel ran (0–1)",
            ),
            ("astroworker_gpu_temperature_celsius", "GPU temperature"),
            ("astroworker_gpu_power_watts", "GPU power draw"),
        ]
        .map(|(name, help)| {
            GaugeVec::new(Opts::new(name, help), &["gpu", "name"]).expect("valid metric")
        });
        for c in [
            Box::new(received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(outcomes.clone()),
            Box::new(runtime.clone()),
            Box::new(queue_depth.clone()),
            Box::new(prefetch_in_use.clone()),
            Box::new(active.clone()),
            Box::new(FRAMES.clone()),
            Box::new(PIXELS.clone()),
        ]
        .into_iter()
        .chain(
            gpu.iter()
                .map(|g| Box::new(g.clone()) as Box<dyn prometheus::core::Collector>),
        ) {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            received,
            outcomes,
            runtime,
            queue_depth,
            prefetch_in_use,
            active,
            gpu,
        }
    }

    /// Sets the GPU gauges from NVML readings; a value NVML could not read is left out.
    pub fn set_gpus(&self, readings: &[crate::gpu::GpuReading]) {
        for r in readings {
            let labels = [r.index.to_string(), r.name.clone()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            let values = [
                r.memory_used_bytes.map(|v| v as f64),
                r.memory_total_bytes.map(|v| v as f64),
                r.utilization_percent.map(|v| f64::from(v) / 100.0),
                r.temperature_c.map(f64::from),
                r.power_w,
            ];
            for (gauge, value) in self.gpu.iter().zip(values) {
                if let Some(v) = value {
                    gauge.with_label_values(&labels).set(v);
                }
            }
        }
    }

    pub fn received(&self, task: &str) {
        self.received.with_label_values(&[task]).inc();
    }

    pub fn finished(&self, task: &str, outcome: Outcome, runtime_s: Option<f64>) {
        let label = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::Revoked => "revoked",
        };
        self.outcomes.with_label_values(&[task, label]).inc();
        if let Some(s) = runtime_s {
            self.runtime.with_label_values(&[task]).observe(s);
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.received("fits.stack");
        m.finished("fits.stack", Outcome::Succeeded, Some(0.2));
        m.finished("fits.stack", Outcome::Failed, None);
        m.queue_depth.with_label_values(&["fits"]).set(3);
        count_frames(2, 10);
        let text = m.render();
        assert!(text.contains("astroworker_tasks_received_total{task=\"fits.stack\"} 1"));
        assert!(
            text.contains("astroworker_tasks_total{outcome=\"succeeded\",task=\"fits.stack\"} 1")
        );
        assert!(text.contains("astroworker_task_runtime_seconds_count{task=\"fits.stack\"} 1"));
        assert!(text.contains("astroworker_queue_depth{queue=\"fits\"} 3"));
        assert!(text.contains("astroworker_frames_processed_total"));
    }

    #[test]
    fn gpu_gauges_follow_the_readings() {
        let m = Metrics::new();
        assert!(
            !m.render().contains("astroworker_gpu_"),
            "no GPU, no GPU series"
        );
        m.set_gpus(&[crate::gpu::GpuReading {
            index: 0,
            name: "NVIDIA H100".into(),
            memory_used_bytes: Some(3 << 30),
            memory_total_bytes: Some(80 << 30),
            utilization_percent: Some(42),
            temperature_c: Some(51),
            power_w: None,
        }]);
        let text = m.render();
        let labels = "{gpu=\"0\",name=\"NVIDIA H100\"}";
        for line in [
            format!("astroworker_gpu_memory_used_bytes{labels} 3221225472"),
            format!("astroworker_gpu_memory_total_bytes{labels} 85899345920"),
            format!("astroworker_gpu_utilization_ratio{labels} 0.42"),
            format!("astroworker_gpu_temperature_celsius{labels} 51"),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        // Power NVML could not read is left out rather than reported as 0.
        assert!(!text.contains("astroworker_gpu_power_watts{"));
    }
}
