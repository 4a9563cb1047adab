//! Membership changes during a run: collecting the survivors after a worker is lost, giving
//! them their new ring, and deciding where the epoch in flight goes on.
//!
//! All replicas are identical after every step, and a step is applied by a worker only when
//! its all-reduce completed, so the survivors differ by at most the one step in flight. The
//! survivor that got furthest becomes the state source (its weights and optimizer state are
//! broadcast over the new ring), the epoch continues at the step after its last, and the
//! remaining global batches are split among the survivors: every example of the epoch is
//! trained exactly once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::backend::Offer;
use crate::local::Fleet;
use crate::regroup_call::{NewRing, RegroupAnswer, RegroupAsk};
use crate::service::{Member, Membership, PendingRegroup, Shared};

/// A worker taken out of the run, and why.
#[derive(Debug, Clone)]
pub struct Lost {
    pub member: Member,
    pub reason: String,
}

/// Where a survivor's weights stand in the epoch being gathered.
fn position_in(req: &RegroupAsk, epoch: u64, total_steps: usize) -> Option<(u64, u64)> {
    if req.epoch == epoch && req.steps_done <= total_steps as u64 {
        Some((req.steps_done, req.applied_examples))
    } else if req.epoch + 1 == epoch {
        // Asked for this epoch and got no step of it yet: the previous one is complete.
        Some((0, 0))
    } else {
        None
    }
}

/// What a regroup needs to know about the run.
pub struct Regroup<'a> {
    pub shared: &'a Arc<Shared>,
    pub epoch: u64,
    pub total_steps: usize,
    /// How long to wait for every worker not already known lost to call Regroup.
    pub timeout: Duration,
    pub min_workers: usize,
}

impl Regroup<'_> {
    /// Settles a membership change during epoch `self.epoch`: bumps the generation (streams of
    /// the old one end, heartbeat replies tell workers to leave their rings), waits for the
    /// members not in `lost` to call Regroup, counts the silent ones lost too, and answers the
    /// survivors with their new ring. With `admit` (at an epoch boundary) the late joiners
    /// waiting in Regroup enter the ring too, at its end. Returns the new membership and every
    /// worker lost.
    pub async fn run(
        &self,
        fleet: &mut Fleet,
        mut lost: Vec<Lost>,
        admit: bool,
    ) -> Result<(Arc<Membership>, Vec<Lost>)> {
        let shared = self.shared;
        let current = shared
            .members
            .borrow()
            .clone()
            .context("a regroup before the workers joined")?;
        let generation = current.generation + 1;
        let joiners = if admit {
            shared.take_candidates()
        } else {
            Vec::new()
        };
        for m in &joiners {
            tracing::info!(
                "worker {} (host {}, pid {}) admitted to the run",
                m.id,
                m.host,
                m.pid
            );
        }
        let current = Membership {
            generation: current.generation,
            slots: current.slots,
            members: current.members.iter().chain(&joiners).cloned().collect(),
            settled: true,
            resume_epoch: current.resume_epoch,
            resume_step: current.resume_step,
        };
        let joiner = |id: usize| joiners.iter().any(|m| m.id == id);
        shared.members.send_replace(Some(Arc::new(Membership {
            generation,
            slots: current.slots,
            members: current.members.clone(),
            settled: false,
            resume_epoch: current.resume_epoch,
            resume_step: current.resume_step,
        })));
        for l in &lost {
            tracing::warn!(
                "worker {} (host {}, pid {}) lost: {}",
                l.member.id,
                l.member.host,
                l.member.pid,
                l.reason
            );
        }
        // A member still sending heartbeats is alive, maybe busy finishing a long step: it gets
        // up to ten heartbeat timeouts (at least a minute) to come back; a silent one, one.
        let started = shared.millis();
        let timeout_ms = self.timeout.as_millis() as u64;
        let deadline = Instant::now() + (self.timeout * 10).max(Duration::from_secs(60));
        let mut waiting: Vec<PendingRegroup> = Vec::new();
        loop {
            for p in shared.take_regroups(|id| current.position(id).is_some()) {
                waiting.retain(|w| w.ask.rank != p.ask.rank);
                waiting.push(p);
            }
            // A call whose worker hung up does not count as coming back.
            waiting.retain(|w| !w.reply.is_closed());
            for (pid, status) in fleet.exited().await? {
                if let Some(m) = current.members.iter().find(|m| m.pid == pid) {
                    if !lost.iter().any(|l| l.member.id == m.id) {
                        lost.push(self.lose(m, format!("its process exited ({status})")));
                    }
                }
            }
            let missing: Vec<&Member> = current
                .members
                .iter()
                .filter(|m| {
                    !lost.iter().any(|l| l.member.id == m.id)
                        && !waiting.iter().any(|w| w.ask.rank as usize == m.id)
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            let now = shared.millis();
            for m in &missing {
                let seen = shared.progress[m.id]
                    .last_seen_ms
                    .load(Ordering::Relaxed)
                    .max(started);
                if now.saturating_sub(seen) > timeout_ms {
                    let reason = format!("no heartbeat for {} s", self.timeout.as_secs());
                    lost.push(self.lose(m, reason));
                }
            }
            if Instant::now() >= deadline {
                for m in missing {
                    if !lost.iter().any(|l| l.member.id == m.id) {
                        let reason = "did not come back to regroup within ten heartbeat timeouts";
                        lost.push(self.lose(m, reason.into()));
                    }
                }
                break;
            }
            tokio::select! {
                _ = shared.regroup_requested.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        // A worker declared lost while still running (hung, cut off) must not come back into
        // a ring or fail the run later by its exit status.
        for l in &lost {
            fleet.kill(l.member.pid).await;
        }

        let (mut stay, refused): (Vec<PendingRegroup>, Vec<PendingRegroup>) =
            waiting.into_iter().partition(|w| {
                let id = w.ask.rank as usize;
                current.position(id).is_some() && !lost.iter().any(|l| l.member.id == id)
            });
        for w in refused {
            let _ = w.reply.send(Err(format!(
                "worker {} was declared lost and is no longer in this run",
                w.ask.rank
            )));
        }
        stay.sort_by_key(|w| current.position(w.ask.rank as usize));
        let survivors: Vec<Member> = stay
            .iter()
            .filter_map(|w| current.position(w.ask.rank as usize))
            .map(|at| current.members[at].clone())
            .collect();
        let refuse_all = |stay: Vec<PendingRegroup>, why: &str| {
            for w in stay {
                let _ = w.reply.send(Err(why.to_string()));
            }
        };
        if survivors.len() < self.min_workers.max(1) {
            let why = format!(
                "{} of {} workers left, fewer than --min-workers {}",
                survivors.len(),
                current.members.len(),
                self.min_workers.max(1)
            );
            refuse_all(stay, &why);
            let lost: Vec<String> = lost
                .iter()
                .map(|l| format!("; lost worker {}: {}", l.member.id, l.reason))
                .collect();
            bail!("giving up: {why}{}", lost.concat());
        }
        let mut positions = Vec::with_capacity(stay.len());
        for w in &stay {
            if joiner(w.ask.rank as usize) {
                positions.push((0, 0));
                continue;
            }
            match position_in(&w.ask, self.epoch, self.total_steps) {
                Some(p) => positions.push(p),
                None => {
                    let why = format!(
                        "worker {} is at epoch {} step {}, but the run is in epoch {}",
                        w.ask.rank,
                        w.ask.epoch + 1,
                        w.ask.steps_done,
                        self.epoch + 1
                    );
                    refuse_all(stay, &why);
                    bail!("regroup failed: {why}");
                }
            }
        }
        // The first survivor among those that got furthest is the state source.
        let (source, &(resume_step, applied)) = positions
            .iter()
            .enumerate()
            .max_by_key(|(i, (steps, _))| (*steps, std::cmp::Reverse(*i)))
            .context("no survivors")?;
        let membership = Arc::new(Membership {
            generation,
            // Joiners add slots; the lost keep theirs, now hosted by survivors.
            slots: current.slots.max(survivors.len()),
            members: survivors.clone(),
            settled: true,
            resume_epoch: self.epoch,
            resume_step: resume_step as usize,
        });
        shared.members.send_replace(Some(membership.clone()));
        for w in &stay {
            if !w.ask.reason.is_empty() {
                tracing::info!("worker {} left its ring: {}", w.ask.rank, w.ask.reason);
            }
        }
        let ids = survivors
            .iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let state = survivors[source].id;
        if admit && lost.is_empty() {
            tracing::info!(
                "membership generation {generation}: {} workers ({ids}); epoch {} starts with the state of worker {state}",
                survivors.len(),
                self.epoch + 1,
            );
        } else {
            tracing::warn!(
                "membership generation {generation}: {} workers ({ids}); epoch {} goes on at step {resume_step} of {} with the state of worker {state}",
                survivors.len(),
                self.epoch + 1,
                self.total_steps,
            );
        }
        let peers: Vec<String> = survivors.iter().map(|m| m.ring_addr.clone()).collect();
        // Chosen afresh, as at the rendezvous: the new ring's members may be on other hosts, and a
        // new NCCL communicator needs a new id.
        let offers: Vec<Offer<'_>> = stay
            .iter()
            .zip(&survivors)
            .map(|(w, m)| Offer {
                host: &m.host,
                nccl_id: &w.ask.nccl_id,
            })
            .collect();
        let backend = shared.backend_for(&offers);
        tracing::info!("all-reduce of generation {generation}: {backend}");
        for (ring_rank, w) in stay.into_iter().enumerate() {
            let _ = w.reply.send(Ok(RegroupAnswer::Ring(NewRing {
                generation,
                ring_rank: ring_rank as u32,
                world_size: survivors.len() as u32,
                peers: peers.clone(),
                epoch: self.epoch,
                resume_step,
                applied_examples: applied,
                state_source: source as u32,
                backend: backend.clone(),
            })));
        }
        shared.metrics.update(|v| {
            v.workers_alive = survivors.len() as u64;
            v.membership_changes += (lost.len() + joiners.len()) as u64;
        });
        Ok((membership, lost))
    }

    fn lose(&self, m: &Member, reason: String) -> Lost {
        tracing::warn!(
            "worker {} (host {}, pid {}) lost: {reason}",
            m.id,
            m.host,
            m.pid
        );
        Lost {
            member: m.clone(),
            reason,
        }
    }
}
