//! Several ranks in one process: one thread per device, exchanging through shared host memory.

use super::{Collectives, ProcessGroup};
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tch::Device;

/// What the ranks of a [`ThreadGroup`] share: one posting slot per rank and a barrier that
/// fails instead of hanging when a rank has left or the wait exceeds the timeout.
#[derive(Debug)]
struct Shared {
    size: usize,
    timeout: Duration,
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct State {
    arrived: usize,
    generation: u64,
    /// A rank that dropped its handle (finished or failed) while others may still call.
    left: Option<usize>,
    slots: Vec<Posted>,
}

/// One rank's contribution to the current collective.
#[derive(Debug, Default, Clone)]
enum Posted {
    #[default]
    Empty,
    I64(Vec<i64>),
    F32(Vec<f32>),
    Bytes(Vec<u8>, Vec<usize>),
    F64(Vec<f64>),
}

/// One rank of a group of threads in this process: expert parallelism over several devices
/// (GPUs, or CPU for testing) without MPI. Each thread builds its own model on its device
/// (`LanguageModel::new` in the rank's [`ProcessGroup`]) and runs the same calls; token rows are staged through
/// host memory. Start the threads with [`ThreadGroup::run`].
///
/// A collective that waits longer than the group's timeout, or for a rank that has dropped its
/// handle (returned, failed or panicked), fails with [`Error::Input`] instead of hanging.
#[derive(Debug)]
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.left.get_or_insert(self.rank);
            self.shared.turn.notify_all();
        }
    }
}

impl ThreadGroup {
    /// `size` connected ranks, whose collectives give up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Config`] for `size == 0`.
    pub fn new(size: usize, timeout: Duration) -> Result<Vec<ThreadGroup>> {
        if size == 0 {
            return Err(Error::Config("a thread group needs at least one rank".into()));
        }
        let state = State { slots: vec![Posted::Empty; size], ..State::default() };
        let shared = Arc::new(Shared { size, timeout, state: Mutex::new(state), turn: Condvar::new() });
        Ok((0..size).map(|rank| ThreadGroup { shared: shared.clone(), rank }).collect())
    }

    /// Runs `work(rank's group, rank's device)` on one thread per device and returns each rank's
    /// result in rank order. Collectives time out after 10 minutes of waiting.
    ///
    /// # Errors
    /// [`Error::Config`] without devices; a rank that panicked gives [`Error::Input`] naming it.
    pub fn run<T: Send>(
        devices: &[Device],
        work: impl Fn(ProcessGroup, Device) -> Result<T> + Sync,
    ) -> Result<Vec<Result<T>>> {
        let groups = Self::new(devices.len(), Duration::from_secs(600))?;
        Ok(std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .zip(devices)
                .map(|(group, &device)| {
                    let work = &work;
                    scope.spawn(move || work(ProcessGroup::new(Arc::new(group)), device))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(rank, h)| h.join().unwrap_or_else(|_| Err(Error::Input(format!("rank {rank} panicked")))))
                .collect()
        }))
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.shared.state.lock().map_err(|_| Error::Input("thread group poisoned by a panicking rank".into()))
    }

    /// Waits until every rank has arrived (or fails: a rank left, or the timeout passed).
    fn barrier<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.shared.size {
            state.arrived = 0;
            state.generation += 1;
            self.shared.turn.notify_all();
            return Ok(state);
        }
        let deadline = Instant::now() + self.shared.timeout;
        while state.generation == generation {
            if let Some(left) = state.left {
                return Err(Error::Input(format!("rank {left} left the group while rank {} waited", self.rank)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Input(format!(
                    "rank {} waited {:?} for the other ranks of the group",
                    self.rank, self.shared.timeout
                )));
            }
            state =
                self.shared.turn.wait_timeout(state, deadline - now).map_err(|_| Error::Input("poisoned".into()))?.0;
        }
        Ok(state)
    }

    /// Posts this rank's contribution, waits for all, reads with `read`, waits again (so that no
    /// slot is overwritten before everyone has read it).
    fn exchange<T>(&self, posted: Posted, read: impl FnOnce(&[Posted]) -> Result<T>) -> Result<T> {
        let mut state = self.lock()?;
        state.slots[self.rank] = posted;
        let state = self.barrier(state)?;
        let out = read(&state.slots);
        let state = self.barrier(state)?;
        drop(state);
        out
    }
}

fn mismatch(what: &str) -> Error {
    Error::Input(format!("ranks called different collectives ({what})"))
}

impl Collectives for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.size
    }

    fn all_to_all_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        let r = self.shared.size;
        if send.len() % r != 0 {
            return Err(Error::Input(format!("all-to-all of {} values does not split over {r} ranks", send.len())));
        }
        let chunk = send.len() / r;
        self.exchange(Posted::I64(send.to_vec()), |slots| {
            let mut out = Vec::with_capacity(send.len());
            for s in slots {
                let Posted::I64(v) = s else { return Err(mismatch("all_to_all_i64")) };
                out.extend_from_slice(
                    v.get(self.rank * chunk..(self.rank + 1) * chunk).ok_or_else(|| mismatch("length"))?,
                );
            }
            Ok(out)
        })
    }

    fn all_to_all_bytes(&self, send: &[u8], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<u8>> {
        if send_counts.len() != self.shared.size || send_counts.iter().sum::<usize>() != send.len() {
            return Err(Error::Input(format!("send counts {send_counts:?} do not split {} bytes", send.len())));
        }
        self.exchange(Posted::Bytes(send.to_vec(), send_counts.to_vec()), |slots| {
            let mut out = Vec::with_capacity(recv_counts.iter().sum());
            for (s, slot) in slots.iter().enumerate() {
                let Posted::Bytes(v, counts) = slot else { return Err(mismatch("all_to_all_bytes")) };
                let start: usize = counts[..self.rank].iter().sum();
                let n = counts[self.rank];
                if recv_counts.get(s) != Some(&n) {
                    return Err(Error::Input(format!(
                        "rank {} expected {:?} bytes from rank {s}, which sends {n}",
                        self.rank,
                        recv_counts.get(s)
                    )));
                }
                out.extend_from_slice(&v[start..start + n]);
            }
            Ok(out)
        })
    }

    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        self.exchange(Posted::I64(send.to_vec()), |slots| {
            let mut out = Vec::with_capacity(send.len() * slots.len());
            for s in slots {
                let Posted::I64(v) = s else { return Err(mismatch("all_gather_i64")) };
                out.extend_from_slice(v);
            }
            Ok(out)
        })
    }

    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>> {
        self.exchange(Posted::F32(send.to_vec()), |slots| {
            let mut out = Vec::with_capacity(send.len() * slots.len());
            for s in slots {
                let Posted::F32(v) = s else { return Err(mismatch("all_gather_f32")) };
                out.extend_from_slice(v);
            }
            Ok(out)
        })
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let sum = self.exchange(Posted::F64(values.to_vec()), |slots| {
            let mut sum = vec![0.0; values.len()];
            for s in slots {
                let Posted::F64(v) = s else { return Err(mismatch("all_reduce_sum_f64")) };
                if v.len() != sum.len() {
                    return Err(mismatch("length"));
                }
                sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            Ok(sum)
        })?;
        values.copy_from_slice(&sum);
        Ok(())
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        let sum = self.exchange(Posted::F32(values.to_vec()), |slots| {
            let mut sum = vec![0.0f32; values.len()];
            for s in slots {
                let Posted::F32(v) = s else { return Err(mismatch("all_reduce_sum_f32")) };
                if v.len() != sum.len() {
                    return Err(mismatch("length"));
                }
                sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            Ok(sum)
        })?;
        values.copy_from_slice(&sum);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_match_their_definitions() {
        let results = ThreadGroup::run(&[Device::Cpu; 3], |p, _| {
            let (c, r) = (p.comm(), p.rank() as i64);
            let a2a = c.all_to_all_i64(&[10 * r, 10 * r + 1, 10 * r + 2])?;
            let counts: Vec<usize> = (0..3).map(|to| (r as usize + to) % 2).collect(); // r→to sends (r+to)%2 values
            let send: Vec<u8> =
                counts.iter().enumerate().flat_map(|(to, &n)| vec![(r * 10) as u8 + to as u8; n]).collect();
            let recv: Vec<usize> = (0..3).map(|from| (from + r as usize) % 2).collect();
            let v = c.all_to_all_bytes(&send, &counts, &recv)?;
            let mut sum = [r as f64, 1.0];
            c.all_reduce_sum_f64(&mut sum)?;
            let gathered = c.all_gather_i64(&[r])?;
            Ok((a2a, v, sum, gathered))
        })
        .unwrap();
        for (r, out) in results.into_iter().enumerate() {
            let (a2a, v, sum, gathered) = out.unwrap();
            let r = r as i64;
            assert_eq!(a2a, vec![r, 10 + r, 20 + r]);
            let want: Vec<u8> =
                (0..3).filter(|from| (from + r) % 2 == 1).map(|from| (from * 10) as u8 + r as u8).collect();
            assert_eq!(v, want, "rank {r}");
            assert_eq!(sum, [3.0, 3.0]);
            assert_eq!(gathered, vec![0, 1, 2]);
        }
    }

    #[test]
    fn a_rank_that_leaves_stops_the_others_instead_of_hanging() {
        let started = Instant::now();
        let results = ThreadGroup::run(&[Device::Cpu; 3], |p, _| {
            if p.rank() == 1 {
                return Err(Error::Input("rank 1 failed".into()));
            }
            let mut v = [1.0];
            p.comm().all_reduce_sum_f64(&mut v)
        })
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(results[1].as_ref().unwrap_err().to_string(), "invalid input: rank 1 failed");
        for r in [0, 2] {
            let err = results[r].as_ref().unwrap_err().to_string();
            assert!(err.contains("rank 1 left the group"), "{err}");
        }
    }
}
