//! Devices as programs and users spell them (`cpu`, `cuda:1`, `auto`).

/// A device as programs spell it: `cpu`, `cuda` (`cuda:0`), `cuda:N`, or `auto` (CUDA when
/// available, else the CPU).
///
/// # Errors
/// [`crate::Error::Config`] naming the value when it is none of these, or names a CUDA device
/// that does not exist here.
pub fn parse_device(s: &str) -> crate::Result<tch::Device> {
    let cuda = |index: usize| {
        let count = tch::Cuda::device_count() as usize;
        match count {
            _ if index < count => Ok(tch::Device::Cuda(index)),
            0 => Err(crate::Error::Config(
                "CUDA was requested but no CUDA device is available (use --device cpu or auto)".into(),
            )),
            _ => Err(crate::Error::Config(format!(
                "cuda:{index} requested but only {count} CUDA device(s) are available"
            ))),
        }
    };
    match s {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(crate::Error::Config(format!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)"))),
        },
    }
}

/// A device as [`parse_device`] reads it (`cpu`, `cuda:1`).
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
