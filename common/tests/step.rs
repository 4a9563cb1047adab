//! The step every worker runs (`train::train_step`): two replicas that each train half of every
//! batch and sum their gradients over a real TCP ring on loopback reach the weights of one
//! replica training whole batches; a worker without an example of a step still joins it; and
//! a step whose all-reduce fails leaves the weights untouched.

use crate::support;

use std::error::Error;
use std::path::Path;
use std::thread::ThreadId;

use candle_core::Device;
use common::collective::{Collective, Local, RingAllReduce};
use common::model::{
    Batch, FlatConfig, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
use common::train::{
    train_share, train_step, Adam, AdamConfig, GroupTotals, Replica, Share, StepError, Tally,
};

type TestResult = Result<(), Box<dyn Error>>;

fn config(vocab_size: usize, num_classes: usize) -> ModelConfig {
    FlatConfig {
        vocab_size,
        num_classes,
        embedding_dim: 16,
        hidden_dim: 12,
        ..FlatConfig::default()
    }
    .parts()
}

/// A batch's token ids and labels.
type Examples = (Vec<Vec<u32>>, Vec<u32>);

/// Eight batches of 16 TREC questions, and a model that fits them.
fn batches() -> Result<(Vec<Examples>, ModelConfig), Box<dyn Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/trec/train.tsv");
    let rows = support::read_tsv(&path, 128)?;
    let (seqs, labels, vocab, classes) = support::encode(&rows, 64);
    let batches = seqs
        .chunks(16)
        .zip(labels.chunks(16))
        .map(|(s, l)| (s.to_vec(), l.to_vec()))
        .collect();
    Ok((batches, config(vocab, classes)))
}

fn batch(seqs: &[Vec<u32>], labels: &[u32]) -> Option<Batch> {
    if seqs.is_empty() {
        return None;
    }
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    Some(Batch::new(&refs, labels).expect("a batch"))
}

#[test]
fn two_workers_on_a_ring_reach_the_weights_of_one() -> TestResult {
    let (batches, cfg) = batches()?;
    let one = Replica::new(&cfg, 3, &Device::Cpu)?;
    let mut opt = Adam::new(one.model().groups(), AdamConfig::default());
    // Examples in two groups (think sources): even and odd positions of each global batch.
    let groups =
        |from: usize, n: usize| -> Vec<u32> { (from..from + n).map(|i| (i % 2) as u32).collect() };
    let mut whole = vec![GroupTotals::default(); 2];
    for (seqs, labels) in &batches {
        let b = batch(seqs, labels);
        let g = groups(0, seqs.len());
        let tally = Tally {
            group_of: &g,
            groups: 2,
        };
        let r = train_step(
            &one,
            &mut opt,
            &mut Local,
            b.as_ref(),
            seqs.len(),
            None,
            Some(&tally),
        )?;
        for (w, t) in whole.iter_mut().zip(&r.totals) {
            w.add(t);
        }
    }
    let rings = support::tcp_ring(2);
    let trained: Vec<(Vec<f32>, Vec<GroupTotals>)> = std::thread::scope(|s| {
        let handles: Vec<_> = rings
            .into_iter()
            .enumerate()
            .map(|(rank, mut ring)| {
                let (batches, cfg) = (&batches, &cfg);
                s.spawn(move || {
                    let replica = Replica::new(cfg, 3, &Device::Cpu).unwrap();
                    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
                    let mut totals = vec![GroupTotals::default(); 2];
                    for (k, (seqs, labels)) in batches.iter().enumerate() {
                        // The last step's examples all go to rank 0: rank 1 joins with none.
                        let mid = if k + 1 == batches.len() {
                            seqs.len()
                        } else {
                            7
                        };
                        let (s, l) = match rank {
                            0 => (&seqs[..mid], &labels[..mid]),
                            _ => (&seqs[mid..], &labels[mid..]),
                        };
                        let from = if rank == 0 { 0 } else { mid };
                        let g = groups(from, s.len());
                        let report = train_step(
                            &replica,
                            &mut opt,
                            &mut ring,
                            batch(s, l).as_ref(),
                            seqs.len(),
                            None,
                            Some(&Tally {
                                group_of: &g,
                                groups: 2,
                            }),
                        )
                        .unwrap();
                        assert_eq!(report.outcomes.len(), s.len());
                        for (t, r) in totals.iter_mut().zip(&report.totals) {
                            t.add(r);
                        }
                    }
                    (support::weights(&replica), totals)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        trained[0].0, trained[1].0,
        "both replicas hold the same weights"
    );
    // Each replica knows the figures of every whole global batch, its neighbour's share too.
    for (rank, (_, totals)) in trained.iter().enumerate() {
        for (g, (t, w)) in totals.iter().zip(&whole).enumerate() {
            assert_eq!(
                (t.examples, t.correct),
                (w.examples, w.correct),
                "rank {rank} group {g}"
            );
            assert!(
                (t.loss_sum - w.loss_sum).abs() <= 1e-3 * w.loss_sum,
                "rank {rank} group {g}"
            );
        }
    }
    let examples: u64 = whole.iter().map(|w| w.examples).sum();
    assert_eq!(
        examples as usize,
        batches.iter().map(|(s, _)| s.len()).sum::<usize>()
    );
    assert_like_one(&one, &trained[0].0, &cfg)
}

/// The weights two workers reached are within 1e-5 of `one`'s, which trained.
fn assert_like_one(one: &Replica, two: &[f32], cfg: &ModelConfig) -> TestResult {
    let single = support::weights(one);
    let diff = single
        .iter()
        .zip(two)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-5, "two workers differ from one by {diff}");
    assert!(
        single != support::weights(&Replica::new(cfg, 3, &Device::Cpu)?),
        "it trained"
    );
    Ok(())
}

/// A collective whose peer is gone.
struct Broken;

impl Collective for Broken {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<(), common::collective::CollectiveError> {
        Err(common::collective::CollectiveError::Broken(
            "peer gone".into(),
        ))
    }
    fn all_reduce_sparse_rows(
        &mut self,
        _: &mut Vec<u32>,
        _: &mut Vec<f32>,
        _: usize,
    ) -> Result<(), common::collective::CollectiveError> {
        Ok(())
    }
    fn take_bytes_sent(&mut self) -> u64 {
        0
    }
}

#[test]
fn a_failed_all_reduce_leaves_the_weights_untouched() -> TestResult {
    let (batches, cfg) = batches()?;
    let replica = Replica::new(&cfg, 3, &Device::Cpu)?;
    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
    let before = support::weights(&replica);
    let (seqs, labels) = &batches[0];
    let b = batch(seqs, labels);
    let err = train_step(
        &replica,
        &mut opt,
        &mut Broken,
        b.as_ref(),
        seqs.len(),
        None,
        None,
    )
    .expect_err("the all-reduce fails");
    assert!(matches!(err, StepError::Collective { .. }), "{err}");
    assert_eq!(support::weights(&replica), before);
    assert_eq!(opt.steps(), 0);
    Ok(())
}

/// Trains every batch with the examples dealt like cards into 3 slots (the i-th example to
/// slot i mod 3), the slots hosted by the ranks of `world` in a row as the coordinator hosts
/// them; returns rank 0's weights (every rank's, checked equal).
fn train_slots(
    batches: &[Examples],
    cfg: &ModelConfig,
    rings: Vec<Box<dyn Collective>>,
) -> Vec<f32> {
    const SLOTS: usize = 3;
    let world = rings.len();
    let trained: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = rings
            .into_iter()
            .enumerate()
            .map(|(rank, mut ring)| {
                s.spawn(move || {
                    let replica = Replica::new(cfg, 3, &Device::Cpu).unwrap();
                    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
                    let (base, extra) = (SLOTS / world, SLOTS % world);
                    let first = rank * base + rank.min(extra);
                    let hosted = first..first + base + usize::from(rank < extra);
                    for (seqs, labels) in batches {
                        let dealt: Vec<Option<Batch>> = hosted
                            .clone()
                            .map(|slot| {
                                let pick = |i: &usize| i % SLOTS == slot;
                                let (s, l): (Vec<Vec<u32>>, Vec<u32>) = seqs
                                    .iter()
                                    .cloned()
                                    .zip(labels.iter().copied())
                                    .enumerate()
                                    .filter(|(i, _)| pick(i))
                                    .map(|(_, x)| x)
                                    .unzip();
                                batch(&s, &l)
                            })
                            .collect();
                        let share = Share {
                            slots: SLOTS,
                            first,
                            batches: dealt.iter().map(Option::as_ref).collect(),
                        };
                        train_share(
                            &replica,
                            &mut opt,
                            ring.as_mut(),
                            &share,
                            seqs.len(),
                            None,
                            None,
                        )
                        .unwrap();
                    }
                    support::weights(&replica)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for w in &trained[1..] {
        assert_eq!(w, &trained[0], "the ranks agree");
    }
    trained.into_iter().next().unwrap()
}

/// What a run that loses workers relies on: 2 workers hosting the 3 slots of a 3-worker run,
/// or one worker hosting them all, compute each slot's gradient on its own and sum them as
/// the 3 workers did, so the weights are the same bits. Summing two slots' examples as one
/// batch does not give them.
#[test]
fn fewer_workers_hosting_the_slots_of_more_reach_the_same_bits() -> TestResult {
    let (batches, cfg) = batches()?;
    let boxed = |rings: Vec<RingAllReduce>| -> Vec<Box<dyn Collective>> {
        rings
            .into_iter()
            .map(|r| Box::new(r) as Box<dyn Collective>)
            .collect()
    };
    let three = train_slots(&batches, &cfg, boxed(support::tcp_ring(3)));
    let two = train_slots(&batches, &cfg, boxed(support::tcp_ring(2)));
    assert!(two == three, "2 workers hosting 3 slots differ from 3");
    let one = train_slots(&batches, &cfg, vec![Box::new(Local)]);
    assert!(one == three, "1 worker hosting 3 slots differs from 3");

    // The whole batch as one slot: the same model up to rounding, but not the same bits.
    let whole = {
        let replica = Replica::new(&cfg, 3, &Device::Cpu)?;
        let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
        for (seqs, labels) in &batches {
            let b = batch(seqs, labels);
            train_step(
                &replica,
                &mut opt,
                &mut Local,
                b.as_ref(),
                seqs.len(),
                None,
                None,
            )?;
        }
        support::weights(&replica)
    };
    let diff = whole
        .iter()
        .zip(&three)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 0.0 && diff <= 1e-5, "one slot against three: {diff}");
    Ok(())
}

/// A dense sum's length, and the thread that asked for it.
type Sum = (usize, ThreadId);

/// A batch's token ids, labels and dropout keys.
type Keyed = (Vec<Vec<u32>>, Vec<u32>, Vec<u64>);

/// A collective that notes every dense sum it makes.
struct Recorded<C> {
    inner: C,
    sums: Vec<Sum>,
}

impl<C: Collective> Collective for Recorded<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(
        &mut self,
        buf: &mut [f32],
    ) -> Result<(), common::collective::CollectiveError> {
        self.sums.push((buf.len(), std::thread::current().id()));
        self.inner.all_reduce_sum(buf)
    }
    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), common::collective::CollectiveError> {
        self.inner.all_reduce_sparse_rows(ids, rows, row_len)
    }
    fn take_bytes_sent(&mut self) -> u64 {
        self.inner.take_bytes_sent()
    }
}

/// A small BERT fine-tuned under a mean-pooled head, every stage trained.
fn finetune_config() -> ModelConfig {
    let bert = support::small_bert(60, 16);
    ModelConfig {
        input: InputConfig::Embedding {
            vocab_size: 60,
            dim: 16,
            frozen: false,
        },
        transformer: Some(TransformerConfig {
            config: bert,
            trained_layers: None,
        }),
        sequence: SequenceConfig::MeanPool,
        heads: vec![HeadConfig {
            num_classes: 3,
            dropout: 0.1,
        }],
    }
}

#[test]
fn a_fine_tuned_model_sums_each_bucket_on_a_thread_of_its_own_as_backward_completes_it(
) -> TestResult {
    let cfg = finetune_config();
    let (batches, _) = batches()?;
    // TREC's ids folded into the small vocabulary; the questions' keys drive dropout.
    let steps: Vec<Keyed> = batches
        .iter()
        .take(4)
        .enumerate()
        .map(|(k, (seqs, labels))| {
            let seqs = seqs
                .iter()
                .map(|s| s.iter().take(20).map(|&t| 1 + t % 59).collect())
                .collect();
            let labels = labels.iter().map(|&l| l % 3).collect();
            let keys = (0..16).map(|i| (k * 16 + i) as u64).collect();
            (seqs, labels, keys)
        })
        .collect();
    let keyed = |seqs: &[Vec<u32>], labels: &[u32], keys: &[u64]| -> Batch {
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        Batch::new(&refs, labels)
            .and_then(|b| b.with_keys(keys))
            .expect("a batch")
    };
    let one = Replica::new(&cfg, 3, &Device::Cpu)?;
    let mut opt = Adam::new(one.model().groups(), AdamConfig::default());
    for (seqs, labels, keys) in &steps {
        let b = keyed(seqs, labels, keys);
        train_step(&one, &mut opt, &mut Local, Some(&b), 16, None, None)?;
    }
    let buckets = one.model().buckets();
    // The head, two blocks and the embeddings' sum and norm, top first.
    assert_eq!(buckets.len(), 4);

    let trained: Vec<(Vec<f32>, Vec<Sum>, ThreadId)> = std::thread::scope(|s| {
        let handles: Vec<_> = support::tcp_ring(2)
            .into_iter()
            .enumerate()
            .map(|(rank, ring)| {
                let (steps, cfg, keyed) = (&steps, &cfg, &keyed);
                s.spawn(move || {
                    let replica = Replica::new(cfg, 3, &Device::Cpu).unwrap();
                    let mut opt = Adam::new(replica.model().groups(), AdamConfig::default());
                    let mut ring = Recorded {
                        inner: ring,
                        sums: Vec::new(),
                    };
                    for (seqs, labels, keys) in steps {
                        let half = rank * 8..rank * 8 + 8;
                        let b = keyed(&seqs[half.clone()], &labels[half.clone()], &keys[half]);
                        train_step(&replica, &mut opt, &mut ring, Some(&b), 16, None, None)
                            .unwrap();
                    }
                    (
                        support::weights(&replica),
                        ring.sums,
                        std::thread::current().id(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let lengths: Vec<usize> = buckets.iter().map(ExactSizeIterator::len).collect();
    for (rank, (_, sums, step_thread)) in trained.iter().enumerate() {
        let got: Vec<usize> = sums.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            got,
            lengths.repeat(steps.len()),
            "rank {rank}: one sum per bucket, top first"
        );
        assert!(
            sums.iter().all(|(_, t)| t != step_thread),
            "rank {rank}: a sum ran on the step's own thread"
        );
    }
    assert_eq!(
        trained[0].0, trained[1].0,
        "both replicas hold the same weights"
    );
    assert_like_one(&one, &trained[0].0, &cfg)
}
