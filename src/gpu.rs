//! NVIDIA GPU telemetry through NVML (`nvml-wrapper`, which loads `libnvidia-ml` at run
//! time, so a binary built without a driver runs anywhere): each GPU is logged at start-up
//! (name, memory, driver, compute capability), and its memory, utilisation, temperature and
//! power are read whenever `/metrics` or `/health` asks. Without a driver NVML does not load:
//! telemetry is off (one log line), those fields are absent, and nothing else changes.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::Serialize;

/// One GPU as NVML reports it now; what NVML cannot read on this device is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReading {
    pub index: u32,
    pub name: String,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Percent of the last sample period during which a kernel ran.
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
}

/// NVML, when it loaded.
pub struct GpuTelemetry {
    nvml: Option<Nvml>,
}

impl GpuTelemetry {
    /// Telemetry switched off (`--gpus none`).
    pub fn off() -> Self {
        Self { nvml: None }
    }

    /// Loads NVML (`libnvidia-ml.so.1`, as drivers and the NVIDIA container runtime install
    /// it) and logs every GPU, or one line saying why there is none.
    pub fn init() -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => {
                tracing::info!("NVML not available ({e}): no GPU telemetry");
                return Self::off();
            }
        };
        let driver = nvml.sys_driver_version().unwrap_or_else(|e| e.to_string());
        let telemetry = Self { nvml: Some(nvml) };
        let readings = telemetry.readings();
        if readings.is_empty() {
            tracing::info!("NVML loaded (driver {driver}) but reports no GPU");
        }
        for gpu in &readings {
            let capability = telemetry
                .nvml
                .as_ref()
                .and_then(|n| n.device_by_index(gpu.index).ok())
                .and_then(|d| d.cuda_compute_capability().ok())
                .map_or_else(|| "?".into(), |c| format!("{}.{}", c.major, c.minor));
            tracing::info!(
                "GPU {}: {}, {} MiB, driver {driver}, compute capability {capability}",
                gpu.index,
                gpu.name,
                gpu.memory_total_bytes.unwrap_or(0) >> 20,
            );
        }
        telemetry
    }

    pub fn available(&self) -> bool {
        self.nvml.is_some()
    }

    /// Every GPU NVML sees, read now (empty without NVML).
    pub fn readings(&self) -> Vec<GpuReading> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok();
                Some(GpuReading {
                    index,
                    name: device.name().unwrap_or_else(|_| "unknown".into()),
                    memory_used_bytes: memory.as_ref().map(|m| m.used),
                    memory_total_bytes: memory.as_ref().map(|m| m.total),
                    utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
                    temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                    power_w: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                })
            })
            .collect()
    }
}
