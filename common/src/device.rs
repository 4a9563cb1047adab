//! `--device`: where a worker trains, or `predict` and `evaluate` compute.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {0}: this binary was built without GPU support; build it with gpu/build.sh \
         (cargo feature `cuda`)"
    )]
    NoGpuSupport(DeviceSpec),
    #[error("opening {spec}: {source}")]
    Open {
        spec: DeviceSpec,
        #[source]
        source: candle_core::Error,
    },
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<candle_core::Device, DeviceError> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(DeviceError::NoGpuSupport(self));
                }
                candle_core::Device::new_cuda(n)
                    .map_err(|source| DeviceError::Open { spec: self, source })
            }
        }
    }

    /// Whether a worker can all-reduce with NCCL on this device.
    pub fn nccl(self) -> bool {
        cfg!(feature = "nccl") && matches!(self, Self::Cuda(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn a_cpu_build_refuses_cuda_with_advice() {
        if cfg!(feature = "cuda") {
            return;
        }
        let err = DeviceSpec::Cuda(0).open().map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("gpu/build.sh"), "{err}");
    }
}
