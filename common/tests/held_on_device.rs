//! Training held on the device (`train::Held::Device`), run on Candle's CPU device with the ops
//! every device has (the composed LSTM, the tensor-op Adam), against the host path with the
//! CPU's fused kernels, on a real slice of TREC: the same losses and weights within 1e-5 after
//! 20 steps, and no copy of weights, gradients or optimizer state between host and device in a
//! step, counted. Where the collective sums host memory (the TCP ring), each bucket's copies
//! are counted too, and a short world's slots reach the host path's sums.

use crate::support;

use std::error::Error;
use std::path::Path;

use candle_core::Device;
use common::collective::{Collective, CollectiveError, Local, RingAllReduce};
use common::model::{
    Batch, FlatConfig, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
};
use common::train::{
    train_share, train_step, transfers_counted, Adam, AdamConfig, Held, Replica, Share, Transfers,
};

type TestResult = Result<(), Box<dyn Error>>;

/// 20 batches of 16 TREC questions, and a model that fits them (the default BiLSTM, smaller).
fn batches() -> Result<(Vec<Batch>, ModelConfig), Box<dyn Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/trec/train.tsv");
    let rows = support::read_tsv(&path, 320)?;
    let (seqs, labels, vocab_size, num_classes) = support::encode(&rows, 64);
    let batches = seqs
        .chunks(16)
        .zip(labels.chunks(16))
        .map(|(s, l)| {
            let refs: Vec<&[u32]> = s.iter().map(Vec::as_slice).collect();
            Batch::new(&refs, l)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = FlatConfig {
        vocab_size,
        num_classes,
        embedding_dim: 32,
        hidden_dim: 24,
        ..FlatConfig::default()
    };
    Ok((batches, cfg.parts()))
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn since(before: Transfers) -> Transfers {
    let now = transfers_counted();
    Transfers {
        weights: now.weights - before.weights,
        gradients: now.gradients - before.gradients,
        optimizer: now.optimizer - before.optimizer,
    }
}

/// What [`train`] gives: each step's loss, the replica and its optimizer, and the copies of
/// state the steps made.
type Trained = (Vec<f64>, Replica, Adam, Transfers);

/// Trains `batches` one step each with `config`.
fn train(
    cfg: &ModelConfig,
    held: Held,
    config: AdamConfig,
    batches: &[Batch],
) -> Result<Trained, Box<dyn Error>> {
    let replica = Replica::held(cfg, 5, &Device::Cpu, held)?;
    let mut opt = replica.hold(Adam::new(replica.model().groups(), config))?;
    let before = transfers_counted();
    let mut losses = Vec::new();
    for batch in batches {
        let report = train_step(
            &replica,
            &mut opt,
            &mut Local,
            Some(batch),
            batch.len(),
            None,
            None,
        )?;
        losses.push(report.loss_sum());
    }
    let copies = since(before);
    Ok((losses, replica, opt, copies))
}

#[test]
fn training_held_on_the_device_matches_the_host_and_copies_no_state_in_a_step() -> TestResult {
    let (batches, cfg) = batches()?;
    assert_eq!(batches.len(), 20);
    let configs = [
        AdamConfig::default(),
        // Clipping (its norm stays on the device) and AdamW's decay.
        AdamConfig {
            clip_norm: Some(0.5),
            weight_decay: 0.01,
            ..AdamConfig::default()
        },
    ];
    for config in configs {
        let (host_losses, host, host_opt, host_copies) = train(&cfg, Held::Host, config, &batches)?;
        let (dev_losses, dev, dev_opt, dev_copies) = train(&cfg, Held::Device, config, &batches)?;
        assert_eq!(host_copies, Transfers::default());
        assert_eq!(
            dev_copies,
            Transfers::default(),
            "20 steps held on the device copied state between host and device"
        );
        for (k, (h, d)) in host_losses.iter().zip(&dev_losses).enumerate() {
            assert!(
                (h - d).abs() <= 1e-5 * h.abs().max(1.0),
                "{config:?}: step {k}: loss {d} held on the device, {h} on the host"
            );
        }
        let (hw, dw) = (support::weights(&host), support::weights(&dev));
        let diff = largest_difference(&hw, &dw);
        assert!(
            diff <= 1e-5,
            "{config:?}: weights differ by {diff} after 20 steps"
        );
        let start = support::weights(&Replica::new(&cfg, 5, &Device::Cpu)?);
        assert!(largest_difference(&hw, &start) > 1e-3, "it trained");

        // The optimizer's state copies out (counted) as the host's would save it.
        let before = transfers_counted();
        let saved = dev_opt.to_bytes()?;
        let state = dev_opt.state()?;
        let _ = dev.weights_bytes()?;
        assert_eq!(
            since(before),
            Transfers {
                weights: 1,
                gradients: 0,
                optimizer: 2,
            }
        );
        let host_state = host_opt.state()?;
        assert_eq!(state.step, 20);
        assert!(largest_difference(&state.m, &host_state.m) <= 1e-6);
        assert!(largest_difference(&state.v, &host_state.v) <= 1e-6);
        for (d, h) in state.tables.iter().zip(&host_state.tables) {
            assert!(largest_difference(&d.m, &h.m) <= 1e-6);
        }
        let reloaded = Adam::from_bytes(dev.model().groups(), config, &saved)?;
        assert_eq!(*reloaded.state()?, *state, "saved and read back unchanged");
    }
    Ok(())
}

/// A worker's weights at the end, and the copies of state it made.
type Worker = (Vec<f32>, Transfers);

/// Two workers held on the device, each training half of every batch over a TCP ring (wrapped
/// by `wrap`); each one's weights and the copies of state it made. Checks that both hold the
/// same weights, within 1e-5 of one worker's on the host.
fn two_workers(
    cfg: &ModelConfig,
    batches: &[Batch],
    wrap: fn(RingAllReduce) -> Box<dyn Collective>,
) -> Result<Vec<Worker>, Box<dyn Error>> {
    let (_, one, _, _) = train(cfg, Held::Host, AdamConfig::default(), batches)?;
    let trained: Vec<Worker> = std::thread::scope(|s| {
        let handles: Vec<_> = support::tcp_ring(2)
            .into_iter()
            .enumerate()
            .map(|(rank, ring)| {
                s.spawn(move || {
                    let mut ring = wrap(ring);
                    let replica = Replica::held(cfg, 5, &Device::Cpu, Held::Device).unwrap();
                    let opt = Adam::new(replica.model().groups(), AdamConfig::default());
                    let mut opt = replica.hold(opt).unwrap();
                    let before = transfers_counted();
                    for batch in batches {
                        let mine = half(batch, rank);
                        train_step(
                            &replica,
                            &mut opt,
                            ring.as_mut(),
                            Some(&mine),
                            batch.len(),
                            None,
                            None,
                        )
                        .unwrap();
                    }
                    (support::weights(&replica), since(before))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        trained[0].0, trained[1].0,
        "both replicas hold the same weights"
    );
    let diff = largest_difference(&trained[0].0, &support::weights(&one));
    assert!(diff <= 1e-5, "two workers differ from one by {diff}");
    Ok(trained)
}

/// Half of every batch: rows `rank`, `rank + 2`, ….
fn half(batch: &Batch, rank: usize) -> Batch {
    let rows: Vec<usize> = (rank..batch.len()).step_by(2).collect();
    let seqs: Vec<&[u32]> = rows.iter().map(|&i| batch.row(i)).collect();
    let labels: Vec<u32> = rows.iter().map(|&i| batch.labels()[i]).collect();
    Batch::new(&seqs, &labels).expect("a half batch")
}

#[test]
fn two_workers_held_on_the_device_sum_over_a_tcp_ring_as_the_host_does() -> TestResult {
    let (batches, cfg) = batches()?;
    let batches = &batches[..6];
    let trained = two_workers(&cfg, batches, |ring| Box::new(ring))?;
    // The ring sums host memory: each step copies the one bucket and the table's rows up and
    // back, and nothing else.
    for (rank, (_, copies)) in trained.iter().enumerate() {
        assert_eq!(
            *copies,
            Transfers {
                weights: 0,
                gradients: 4 * batches.len() as u64,
                optimizer: 0,
            },
            "rank {rank}"
        );
    }
    Ok(())
}

#[test]
fn a_survivor_hosting_two_slots_on_the_device_sums_them_as_the_host_does() -> TestResult {
    let (batches, cfg) = batches()?;
    let batches = &batches[..5];
    let mut trained = Vec::new();
    for held in [Held::Host, Held::Device] {
        let replica = Replica::held(&cfg, 5, &Device::Cpu, held)?;
        let mut opt = replica.hold(Adam::new(replica.model().groups(), AdamConfig::default()))?;
        let mut local = Local;
        for batch in batches {
            let (a, b) = (half(batch, 0), half(batch, 1));
            let share = Share {
                slots: 2,
                first: 0,
                batches: vec![Some(&a), Some(&b)],
            };
            let collective: &mut dyn Collective = &mut local;
            train_share(
                &replica,
                &mut opt,
                collective,
                &share,
                batch.len(),
                None,
                None,
            )?;
        }
        trained.push(support::weights(&replica));
    }
    let diff = largest_difference(&trained[0], &trained[1]);
    assert!(diff <= 1e-5, "the device's slots differ by {diff}");
    Ok(())
}

/// A small BERT fine-tuned under a BiLSTM head, all of it trained or its top block alone.
fn finetuned(trained_layers: Option<usize>) -> ModelConfig {
    ModelConfig {
        input: InputConfig::Embedding {
            vocab_size: 50,
            dim: 8,
            frozen: trained_layers.is_some(),
        },
        transformer: Some(TransformerConfig {
            config: support::small_bert(50, 8),
            trained_layers,
        }),
        sequence: SequenceConfig::Bilstm {
            hidden_dim: 6,
            layers: 1,
            dropout: 0.0,
        },
        heads: vec![HeadConfig {
            num_classes: 3,
            dropout: 0.1,
        }],
    }
}

#[test]
fn a_fine_tuned_encoder_held_on_the_device_trains_as_on_the_host() -> TestResult {
    let rows: [&[u32]; 4] = [&[2, 7, 9, 3], &[2, 9, 9, 11, 40, 3], &[2, 5, 3], &[2, 8, 3]];
    let batches: Vec<Batch> = (0..8u64)
        .map(|k| {
            let labels: Vec<u32> = (0..4).map(|i| ((i + k) % 3) as u32).collect();
            let keys: Vec<u64> = (0..4).map(|i| 100 * k + i).collect();
            Batch::new(&rows, &labels).and_then(|b| b.with_keys(&keys))
        })
        .collect::<Result<_, _>>()?;
    let config = AdamConfig {
        encoder_lr: Some(3e-4),
        ..AdamConfig::default()
    };
    for trained_layers in [None, Some(1)] {
        let cfg = finetuned(trained_layers);
        let (host_losses, host, _, _) = train(&cfg, Held::Host, config, &batches)?;
        let (dev_losses, dev, _, copies) = train(&cfg, Held::Device, config, &batches)?;
        assert_eq!(copies, Transfers::default(), "{trained_layers:?}");
        assert!(
            dev.model().buckets().len() > 1,
            "the encoder's stages are buckets"
        );
        for (h, d) in host_losses.iter().zip(&dev_losses) {
            assert!((h - d).abs() <= 1e-5 * h.abs().max(1.0), "{h} vs {d}");
        }
        let diff = largest_difference(&support::weights(&host), &support::weights(&dev));
        assert!(diff <= 1e-5, "{trained_layers:?}: weights differ by {diff}");
    }
    Ok(())
}

/// A TCP ring that sums a tensor's own memory in place, as NCCL sums GPU memory: with it the
/// step takes its device branch here (buckets summed where they lie, the table's rows gathered
/// on the device).
struct SumsInPlace(RingAllReduce);

/// Candle's hook for an in-place op: the ring sums the tensor's memory.
struct RingSum<'a>(
    std::cell::RefCell<&'a mut RingAllReduce>,
    std::cell::RefCell<Option<Result<(), CollectiveError>>>,
);

impl candle_core::InplaceOp1 for RingSum<'_> {
    fn name(&self) -> &'static str {
        "ring_sum"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (candle_core::CpuStorage::F32(data), Some((a, b))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("contiguous f32 only");
        };
        *self.1.borrow_mut() = Some(self.0.borrow_mut().all_reduce_sum(&mut data[a..b]));
        Ok(())
    }
}

impl Collective for SumsInPlace {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.0.all_reduce_sum(buf)
    }
    fn all_reduce_sparse_rows(
        &mut self,
        ids: &mut Vec<u32>,
        rows: &mut Vec<f32>,
        row_len: usize,
    ) -> Result<(), CollectiveError> {
        self.0.all_reduce_sparse_rows(ids, rows, row_len)
    }
    fn take_bytes_sent(&mut self) -> u64 {
        self.0.take_bytes_sent()
    }
    fn sums_on_device(&self) -> bool {
        true
    }
    fn all_reduce_on_device(&mut self, buf: &candle_core::Tensor) -> Result<(), CollectiveError> {
        let op = RingSum(std::cell::RefCell::new(&mut self.0), Default::default());
        buf.inplace_op1(&op)
            .map_err(|e| CollectiveError::InvalidInput(e.to_string()))?;
        op.1.into_inner()
            .unwrap_or_else(|| Err(CollectiveError::Backend("no sum ran".into())))
    }
}

#[test]
fn workers_whose_collective_sums_device_memory_copy_no_gradients() -> TestResult {
    let (batches, cfg) = batches()?;
    let batches = &batches[..6];
    let trained = two_workers(&cfg, batches, |ring| Box::new(SumsInPlace(ring)))?;
    for (rank, (_, copies)) in trained.iter().enumerate() {
        assert_eq!(*copies, Transfers::default(), "rank {rank}");
    }
    Ok(())
}
