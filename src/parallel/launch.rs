//! Starting a program's ranks: one process (a group of one), one thread per device of this
//! process ([`ThreadGroup`]), or this process as one rank of an MPI job ([`MpiWorld`], cargo
//! feature `mpi`, started by `mpirun -np R`).

use super::{ProcessGroup, ThreadGroup};
use crate::error::Result;
use tch::Device;

/// Where a program's ranks run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranks {
    /// This process alone, on a device.
    Single(Device),
    /// One rank (thread) per device of this process.
    Threads(Vec<Device>),
    /// This process is one rank of an MPI job; with CUDA, rank `r` takes `cuda:(r mod n)` of the
    /// `n` devices it sees ([`ProcessGroup::rank_device`]).
    Mpi(Device),
}

impl Ranks {
    /// From a program's flags: `devices` (non-empty: threads), else `mpi`, else `device` alone.
    pub fn from_flags(mpi: bool, devices: &[Device], device: Device) -> Self {
        match (devices.is_empty(), mpi) {
            (false, _) => Ranks::Threads(devices.to_vec()),
            (true, true) => Ranks::Mpi(device),
            (true, false) => Ranks::Single(device),
        }
    }
}

/// Runs `work(group, device)` on every rank of `ranks` that lives in this process and returns
/// their results in rank order (one for [`Ranks::Single`] and [`Ranks::Mpi`]). Under MPI a
/// failing rank prints its error and aborts the whole job, so that the other ranks do not wait
/// in a collective forever.
///
/// # Errors
/// [`crate::Error::Config`] for [`Ranks::Mpi`] in a build without the `mpi` feature; errors of
/// starting the transport. The ranks' own errors are in the returned results.
pub fn launch<T: Send>(
    ranks: &Ranks,
    work: impl Fn(ProcessGroup, Device) -> Result<T> + Sync,
) -> Result<Vec<Result<T>>> {
    match ranks {
        Ranks::Single(device) => Ok(vec![work(ProcessGroup::single(), *device)]),
        Ranks::Threads(devices) => ThreadGroup::run(devices, work),
        Ranks::Mpi(device) => mpi_rank(*device, work),
    }
}

#[cfg(feature = "mpi")]
fn mpi_rank<T: Send>(device: Device, work: impl Fn(ProcessGroup, Device) -> Result<T>) -> Result<Vec<Result<T>>> {
    let world = std::sync::Arc::new(super::MpiWorld::init()?);
    let group = ProcessGroup::new(world.clone());
    let (rank, device) = (group.rank(), group.rank_device(device));
    match work(group, device) {
        Ok(value) => Ok(vec![Ok(value)]),
        Err(e) => {
            // The other ranks may be waiting in a collective: stop the whole job.
            eprintln!("error (rank {rank}): {e}");
            world.abort(1)
        }
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank<T: Send>(_device: Device, _work: impl Fn(ProcessGroup, Device) -> Result<T>) -> Result<Vec<Result<T>>> {
    Err(crate::Error::Config(
        "expert parallelism over MPI needs the MPI transport: build with `--features mpi` (Debian: apt-get install \
         libopenmpi-dev openmpi-bin libclang1-14 libclang-common-14-dev) and start the ranks with mpirun -np R"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_flags_and_threads_give_one_result_per_rank() {
        assert_eq!(Ranks::from_flags(false, &[], Device::Cpu), Ranks::Single(Device::Cpu));
        assert_eq!(Ranks::from_flags(true, &[], Device::Cpu), Ranks::Mpi(Device::Cpu));
        let threads = Ranks::from_flags(true, &[Device::Cpu, Device::Cpu], Device::Cpu);
        let results = launch(&threads, |group, _| Ok((group.rank(), group.world_size()))).unwrap();
        let ranks: Vec<(usize, usize)> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(ranks, vec![(0, 2), (1, 2)]);
        let single = launch(&Ranks::Single(Device::Cpu), |group, _| Ok(group.exchanges_rows())).unwrap();
        assert!(!single[0].as_ref().unwrap(), "one process is a group of one");
    }
}
