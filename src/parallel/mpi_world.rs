//! The MPI transport (crate `mpi`, cargo feature `mpi`).

use super::Collectives;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// `MPI_COMM_WORLD` of an initialised MPI environment. MPI is initialised once per process
/// ([`MpiWorld::init`]) and finalised when the value is dropped.
pub struct MpiWorld {
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

// SAFETY: MPI is initialised with the default (single-thread) level and every collective is
// issued from the training thread; the handle is only moved between threads, never used from
// two at once (the model and trainer hold it behind `Arc` but drive it from one thread).
unsafe impl Send for MpiWorld {}
// SAFETY: see above — no concurrent use.
unsafe impl Sync for MpiWorld {}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld").field("rank", &self.world.rank()).field("size", &self.world.size()).finish()
    }
}

impl MpiWorld {
    /// Initialises MPI (under `mpirun`, or as a single rank without it).
    ///
    /// # Errors
    /// [`Error::Input`] if MPI was already initialised in this process.
    pub fn init() -> Result<Self> {
        let universe =
            mpi::initialize().ok_or_else(|| Error::Input("MPI is already initialised in this process".into()))?;
        Ok(Self { world: universe.world(), _universe: universe })
    }

    /// Aborts every rank of the job with `code` (used when one rank fails, so that the others do
    /// not wait forever in a collective).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

fn counts(v: &[usize], what: &str) -> Result<Vec<Count>> {
    v.iter()
        .map(|&c| Count::try_from(c).map_err(|_| Error::Input(format!("{what} count {c} exceeds MPI's i32 limit"))))
        .collect()
}

fn displacements(c: &[Count]) -> Vec<Count> {
    c.iter()
        .scan(0, |acc, &x| {
            let d = *acc;
            *acc += x;
            Some(d)
        })
        .collect()
}

impl Collectives for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_to_all_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        let r = self.world_size();
        if send.len() % r != 0 {
            return Err(Error::Input(format!("all-to-all of {} values does not split over {r} ranks", send.len())));
        }
        let mut recv = vec![0i64; send.len()];
        self.world.all_to_all_into(send, &mut recv[..]);
        Ok(recv)
    }

    fn all_to_all_bytes(&self, send: &[u8], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<u8>> {
        if send_counts.iter().sum::<usize>() != send.len() {
            return Err(Error::Input(format!("send counts {send_counts:?} do not add up to {} bytes", send.len())));
        }
        // Every chunk travels behind a one-byte header, so that no message is empty: some Open MPI
        // releases (Debian's 4.1 among them) skip empty sends but still post the matching
        // receives in `MPI_Alltoallv`, and a rank that leaves early then matches its next
        // exchange against them (MPI_ERR_TRUNCATE). Costs one copy of the rows.
        let padded = |c: &[usize]| c.iter().map(|n| n + 1).collect::<Vec<usize>>();
        let (sc, rc) = (counts(&padded(send_counts), "send")?, counts(&padded(recv_counts), "receive")?);
        let (sd, rd) = (displacements(&sc), displacements(&rc));
        let mut framed = Vec::with_capacity(send.len() + send_counts.len());
        let mut at = 0;
        for &n in send_counts {
            framed.push(0u8);
            framed.extend_from_slice(&send[at..at + n]);
            at += n;
        }
        let mut recv = vec![0u8; recv_counts.iter().sum::<usize>() + recv_counts.len()];
        {
            let sp = Partition::new(&framed[..], &sc[..], &sd[..]);
            let mut rp = PartitionMut::new(&mut recv[..], &rc[..], &rd[..]);
            self.world.all_to_all_varcount_into(&sp, &mut rp);
        }
        let mut out = Vec::with_capacity(recv_counts.iter().sum());
        for (&n, &d) in recv_counts.iter().zip(&rd) {
            let start = d as usize + 1;
            out.extend_from_slice(&recv[start..start + n]);
        }
        Ok(out)
    }

    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        let mut recv = vec![0i64; send.len() * self.world_size()];
        self.world.all_gather_into(send, &mut recv[..]);
        Ok(recv)
    }

    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>> {
        let mut recv = vec![0f32; send.len() * self.world_size()];
        self.world.all_gather_into(send, &mut recv[..]);
        Ok(recv)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
}
