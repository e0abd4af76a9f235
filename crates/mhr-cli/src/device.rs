//! `--device cpu|wgpu[:N]|cuda[:N]`: which Burn backend runs a command, among those compiled in.
//!
//! Library code is generic over `B: AutodiffBackend`; this module is the one place that names concrete
//! backends, behind the cargo features `flex` and `ndarray` (both default), `wgpu` and `cuda`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use mhr_models::Precision;

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The default CPU backend (see [`DeviceSpec::resolve`]).
    Cpu,
    /// Burn's `ndarray` CPU backend.
    Ndarray,
    /// Burn's `flex` CPU backend (gemm, SIMD, rayon).
    Flex,
    /// The default WGPU adapter, or the N-th discrete GPU.
    Wgpu(Option<usize>),
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| format!("invalid device index in `{s}`"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("ndarray", None) => Ok(DeviceSpec::Ndarray),
            ("flex", None) => Ok(DeviceSpec::Flex),
            ("wgpu", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, ndarray, flex, wgpu[:N] or cuda[:N])"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Ndarray => f.write_str("ndarray"),
            DeviceSpec::Flex => f.write_str("flex"),
            DeviceSpec::Wgpu(None) => f.write_str("wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// `cpu` is the faster CPU backend compiled in: `flex` when built, else `ndarray` (docs/performance.md).
    pub fn resolve(self) -> Self {
        match self {
            DeviceSpec::Cpu if !cfg!(feature = "flex") && cfg!(feature = "ndarray") => DeviceSpec::Ndarray,
            DeviceSpec::Cpu => DeviceSpec::Flex,
            other => other,
        }
    }
}

/// `--devices`: the peers of a data-parallel run, all on one backend: `cpu:N` (also `flex:N`, `ndarray:N`) for
/// N peers on the CPU, or a list of GPUs such as `cuda:0,cuda:1` (`wgpu:0,wgpu:1`); one device as `--device`
/// names it is one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// The backend, and the first peer's device.
    pub spec: DeviceSpec,
    peers: Peers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Peers {
    /// Peers sharing the CPU device.
    Cpu(usize),
    /// One peer per GPU index.
    Gpus(Vec<usize>),
}

impl FromStr for Devices {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("invalid --devices `{s}`: {why}");
        if let Some((name, count)) = s.split_once(':')
            && matches!(name, "cpu" | "flex" | "ndarray")
        {
            let count: usize = count
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| invalid("the number of CPU peers must be a positive integer"))?;
            return Ok(Self {
                spec: name.parse()?,
                peers: Peers::Cpu(count),
            });
        }
        let specs = s
            .split(',')
            .map(|d| d.trim().parse::<DeviceSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if let [spec] = specs[..] {
            return Ok(Self::one(spec));
        }
        let indices = specs
            .iter()
            .map(|spec| match (spec, specs[0]) {
                (DeviceSpec::Cuda(i), DeviceSpec::Cuda(_))
                | (DeviceSpec::Wgpu(Some(i)), DeviceSpec::Wgpu(_)) => Ok(*i),
                _ => Err(invalid(&format!(
                    "`{spec}`: list GPUs of one backend with their index (cuda:0,cuda:1 or wgpu:0,wgpu:1), \
                     or give CPU peers as cpu:N"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = (1..indices.len()).find(|&i| indices[..i].contains(&indices[i])) {
            return Err(invalid(&format!("`{}` is named twice", specs[i])));
        }
        Ok(Self {
            spec: specs[0],
            peers: Peers::Gpus(indices),
        })
    }
}

/// As `--devices` takes it.
impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.peers, self.spec) {
            (Peers::Cpu(1), spec) => write!(f, "{spec}"),
            (Peers::Cpu(n), spec) => write!(f, "{spec}:{n}"),
            (Peers::Gpus(indices), spec) => {
                let backend = if matches!(spec, DeviceSpec::Cuda(_)) {
                    "cuda"
                } else {
                    "wgpu"
                };
                let names: Vec<String> = indices.iter().map(|i| format!("{backend}:{i}")).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl Devices {
    /// One device, as `--device` names it.
    pub fn one(spec: DeviceSpec) -> Self {
        let peers = match spec {
            DeviceSpec::Cuda(i) | DeviceSpec::Wgpu(Some(i)) => Peers::Gpus(vec![i]),
            _ => Peers::Cpu(1),
        };
        Self { spec, peers }
    }

    /// The peers' devices on backend `B`, whose first device is `first` (the one [`with_backend`] started).
    pub fn of<B: burn::tensor::backend::Backend>(&self, first: &B::Device) -> Vec<B::Device> {
        use burn::tensor::backend::{Device as _, DeviceId, DeviceOps as _};
        match &self.peers {
            Peers::Cpu(n) => vec![first.clone(); *n],
            Peers::Gpus(indices) => {
                let type_id = first.id().type_id;
                (indices.iter())
                    .map(|&i| {
                        B::Device::from_id(DeviceId {
                            type_id,
                            index_id: i as u16,
                        })
                    })
                    .collect()
            }
        }
    }
}

/// The backends this binary was built with.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Work that runs on whichever backend the user picked (`Send`: CPU work runs on a worker thread).
pub trait BackendTask: Send {
    type Output: Send;
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<Self::Output>;
}

fn not_compiled(spec: DeviceSpec, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "device `{spec}` is not available: this binary was built without the `{feature}` feature \
         (compiled in: {}); rebuild with `--features {feature}`",
        compiled_backends().join(", ")
    )
}

/// Runs `task` on the backend of `spec`.
pub fn with_backend<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec.resolve() {
        DeviceSpec::Cpu | DeviceSpec::Ndarray => {
            #[cfg(feature = "ndarray")]
            {
                use burn::backend::{Autodiff, NdArray, ndarray::NdArrayDevice};
                task.run::<Autodiff<NdArray>>(NdArrayDevice::Cpu, spec)
            }
            #[cfg(not(feature = "ndarray"))]
            {
                let _ = task;
                Err(not_compiled(spec, "ndarray"))
            }
        }
        DeviceSpec::Flex => {
            #[cfg(feature = "flex")]
            {
                use burn::backend::{Autodiff, Flex};
                in_pool(|| task.run::<Autodiff<Flex>>(Default::default(), spec))
            }
            #[cfg(not(feature = "flex"))]
            {
                let _ = task;
                Err(not_compiled(spec, "flex"))
            }
        }
        DeviceSpec::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::{Autodiff, Wgpu, wgpu::WgpuDevice};
                let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
                start_gpu::<Autodiff<Wgpu>>(spec, &device)?;
                task.run::<Autodiff<Wgpu>>(device, spec)
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = (task, index);
                Err(not_compiled(spec, "wgpu"))
            }
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};
                let device = CudaDevice::new(index);
                start_gpu::<Autodiff<Cuda>>(spec, &device)?;
                task.run::<Autodiff<Cuda>>(device, spec)
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (task, index);
                Err(not_compiled(spec, "cuda"))
            }
        }
    }
}

/// Runs CPU work on a worker of a rayon pool: flex's parallel gemm and element-wise kernels then start on the
/// calling thread instead of handing each call to the global pool and waiting for it (15-20 % of a small
/// training step; docs/performance.md).
#[cfg(feature = "flex")]
fn in_pool<R: Send>(work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    rayon::ThreadPoolBuilder::new().build()?.install(work)
}

/// Starts a GPU device with one tiny op, so that a missing driver, library or adapter is an error before any work.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn start_gpu<B: AutodiffBackend>(spec: DeviceSpec, device: &B::Device) -> Result<()> {
    start_device(spec, || {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data();
    })
}

/// Runs `start` (the first op on a device) and turns a panic into an error naming the device and the cause. The GPU
/// runtimes report a missing driver, library or adapter by panicking on their device thread, which the caller then
/// sees only as a closed channel: the hook keeps the first panic's message, which names the real cause.
pub fn start_device(spec: DeviceSpec, start: impl FnOnce()) -> Result<()> {
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::{Arc, Mutex, PoisonError};

    let cause = Arc::new(Mutex::new(None::<String>));
    let first = Arc::clone(&cause);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let mut first = first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(info.payload_as_str().unwrap_or("unknown panic").to_string());
        }
    }));
    let started = panic::catch_unwind(AssertUnwindSafe(start));
    panic::set_hook(previous);
    started.map_err(|_| {
        let cause = cause.lock().unwrap_or_else(PoisonError::into_inner).take();
        anyhow::anyhow!(
            "device `{spec}` could not be started: {}",
            cause.as_deref().unwrap_or("unknown panic")
        )
    })
}

/// The most device memory a GPU backend's pools held at the points where [`DeviceMemory::sample`] was called
/// (cubecl's reserved bytes, which cover what the allocator keeps for reuse); `None` on the CPU backends, whose
/// memory is the process's.
pub struct DeviceMemory {
    spec: DeviceSpec,
    peak: Option<u64>,
}

impl DeviceMemory {
    pub fn new(spec: DeviceSpec) -> Self {
        Self { spec, peak: None }
    }

    pub fn sample(&mut self) {
        if let Some(bytes) = reserved_bytes(self.spec) {
            self.peak = Some(self.peak.map_or(bytes, |peak| peak.max(bytes)));
        }
    }

    /// MiB, to one decimal.
    pub fn peak_mb(&self) -> Option<f64> {
        self.peak
            .map(|b| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0)
    }
}

fn reserved_bytes(spec: DeviceSpec) -> Option<u64> {
    #[allow(unused_imports)]
    use cubecl::Runtime;
    match spec.resolve() {
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(index) => {
            use burn::backend::wgpu::{WgpuDevice, WgpuRuntime};
            let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
            WgpuRuntime::client(&device)
                .memory_usage()
                .ok()
                .map(|u| u.bytes_reserved)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => {
            use cubecl::cuda::{CudaDevice, CudaRuntime};
            CudaRuntime::client(&CudaDevice::new(index))
                .memory_usage()
                .ok()
                .map(|u| u.bytes_reserved)
        }
        _ => None,
    }
}

/// Refuses a precision the device's backend cannot compute in ([`Precision::check`]), before a command writes
/// anything.
pub fn ensure_precision(spec: DeviceSpec, precision: Precision) -> Result<()> {
    struct Check(Precision);
    impl BackendTask for Check {
        type Output = ();
        fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<()> {
            Ok(self.0.check::<B::InnerBackend>(&device)?)
        }
    }
    with_backend(spec, Check(precision))
}

/// Checks that `spec` names a compiled-in backend, before any work starts.
pub fn ensure_compiled(spec: DeviceSpec) -> Result<()> {
    let (name, feature) = match spec.resolve() {
        DeviceSpec::Cpu | DeviceSpec::Ndarray => ("ndarray", "ndarray"),
        DeviceSpec::Flex => ("flex", "flex"),
        DeviceSpec::Wgpu(_) => ("wgpu", "wgpu"),
        DeviceSpec::Cuda(_) => ("cuda", "cuda"),
    };
    if compiled_backends().contains(&name) {
        Ok(())
    } else {
        bail!(not_compiled(spec, feature))
    }
}
