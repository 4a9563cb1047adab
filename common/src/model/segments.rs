//! The backward pass in segments, top of the model first, each completing one bucket of the
//! flat dense gradient, so that the training step can all-reduce a bucket while the pass goes
//! on below it.
//!
//! A fine-tuned encoder's training pass is cut at the end of every stage that trains (see
//! `encoder::trainable::Cut`). Backward runs from the loss to the top cut, then through each
//! stage in turn. The dense order is the computation's (the encoder's stages bottom first, then
//! the sequence encoder and the heads), so each segment's parameters are one contiguous range:
//! its bucket. A model without an encoder to fine-tune is one segment and one bucket.
//!
//! The gradients are those of one backward pass over the whole graph, bit for bit: a stage gets
//! the gradient of its output through `sum(output · g)`, whose gradient with respect to
//! `output` is `1 · g`, and each leaf collects its contributions in the order in which the
//! whole graph adds them up in the node the leaf stands for.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, Var};

use super::error::{ModelError, Result};
use super::params::ParamGroup;
use super::transformer::{self, FROZEN_GROUP, GROUP};
use crate::encoder::trainable::Cut;

/// Which segment of the backward pass completes a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The sequence encoder and the heads: complete after the first segment.
    Top,
    /// A trained stage of the encoder (0 the embeddings, l + 1 block l).
    Stage(usize),
}

/// A contiguous range of the flat dense gradient that one segment completes.
pub(crate) struct Bucket {
    pub(crate) range: Range<usize>,
    part: Part,
    /// Each parameter with its offset in the bucket.
    params: Vec<(usize, Var)>,
}

impl Bucket {
    /// Copies the parameters' gradients from `store` into `out` (the bucket's range).
    fn fill(&self, out: &mut [f32], store: &GradStore) -> Result<()> {
        for (offset, var) in &self.params {
            let dst = &mut out[*offset..*offset + var.elem_count()];
            match store.get(var) {
                Some(g) => copy_into(dst, g)?,
                None => dst.fill(0.0),
            }
        }
        Ok(())
    }

    /// The parameters' gradients from `store` as one flat tensor on `device` (zeros for a
    /// parameter without one, or without a store).
    fn flat(&self, store: Option<&GradStore>, device: &candle_core::Device) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.params.len());
        for (_, var) in &self.params {
            parts.push(match store.and_then(|s| s.get(var)) {
                Some(g) => g.flatten_all()?,
                None => Tensor::zeros(var.elem_count(), DType::F32, device)?,
            });
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// The buckets of `groups`' dense gradient, in the order the backward pass completes them (top
/// first). A frozen group gets none: its gradient is zeros on every worker, so there is nothing
/// to sum.
pub(crate) fn plan(groups: &[ParamGroup]) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut offset = 0;
    for group in groups.iter().filter(|g| g.is_dense()) {
        for (name, var) in &group.params {
            let n = var.elem_count();
            let part = match group.name.as_str() {
                FROZEN_GROUP => None,
                GROUP => Some(Part::Stage(transformer::stage(
                    name.strip_prefix(&format!("{GROUP}.")).unwrap_or(name),
                ))),
                _ => Some(Part::Top),
            };
            if let Some(part) = part {
                match buckets.last_mut() {
                    Some(b) if b.part == part && b.range.end == offset => {
                        b.params.push((offset - b.range.start, var.clone()));
                        b.range.end += n;
                    }
                    _ => buckets.push(Bucket {
                        range: offset..offset + n,
                        part,
                        params: vec![(0, var.clone())],
                    }),
                }
            }
            offset += n;
        }
    }
    buckets.reverse();
    buckets
}

/// Backward from `loss` in segments: the top's, then each of `cuts` (bottom first, as the
/// forward pass made them) from the top down. `dense` (the flat dense gradient, zeros on entry)
/// is filled bucket by bucket, and each bucket is handed to `ready` as soon as it is complete,
/// every one exactly once and in `buckets`' order, whatever the pass finds (a worker's
/// collective calls must match the others'). Returns the gradient of `leaf` (the input's word
/// vectors), if it has one.
pub(crate) fn backward<'a>(
    buckets: &[Bucket],
    loss: &Tensor,
    cuts: Vec<Cut>,
    top: Option<Tensor>,
    leaf: Option<&Tensor>,
    dense: &'a mut [f32],
    ready: &mut dyn FnMut(&'a mut [f32]),
) -> Result<Option<Tensor>> {
    let mut pending = slices(buckets, dense)?.into_iter();
    backward_with(buckets, loss, cuts, top, leaf, &mut |bucket, store| {
        let Some((_, slice)) = pending.next() else {
            return Err(ModelError::Gradients("more buckets than slices".into()));
        };
        if let Some(store) = store {
            bucket.fill(slice, store)?;
        }
        ready(slice);
        Ok(())
    })
}

/// As [`backward`], with each bucket's gradient left where the model lies: one flat tensor
/// per bucket, in `buckets`' order (zeros where no segment reached).
pub(crate) fn backward_flat(
    buckets: &[Bucket],
    loss: &Tensor,
    cuts: Vec<Cut>,
    top: Option<Tensor>,
    leaf: Option<&Tensor>,
) -> Result<(Vec<Tensor>, Option<Tensor>)> {
    let mut flat = Vec::with_capacity(buckets.len());
    let device = loss.device().clone();
    let dx = backward_with(buckets, loss, cuts, top, leaf, &mut |bucket, store| {
        flat.push(bucket.flat(store, &device)?);
        Ok(())
    })?;
    Ok((flat, dx))
}

/// The segmented pass of [`backward`]: `done` gets each bucket, in `buckets`' order, with the
/// gradients that complete it (`None`: no segment reached it, so its gradient is zero).
fn backward_with(
    buckets: &[Bucket],
    loss: &Tensor,
    mut cuts: Vec<Cut>,
    top: Option<Tensor>,
    leaf: Option<&Tensor>,
    done: &mut dyn FnMut(&Bucket, Option<&GradStore>) -> Result<()>,
) -> Result<Option<Tensor>> {
    let mut pending = buckets.iter();
    // Hands on every bucket up to and including `part`'s (a part without one: none).
    let mut hand = |part: Part, store: Option<&GradStore>| -> Result<()> {
        if !pending.clone().any(|b| b.part == part) {
            return Ok(());
        }
        for bucket in pending.by_ref() {
            let mine = bucket.part == part;
            done(bucket, store.filter(|_| mine))?;
            if mine {
                break;
            }
        }
        Ok(())
    };
    let mut dx = None;
    let mut keep_dx = |store: &GradStore| {
        if let Some(g) = leaf.and_then(|l| store.get(l)) {
            dx = Some(g.clone());
        }
    };
    let store = loss.backward()?;
    hand(Part::Top, Some(&store))?;
    keep_dx(&store);
    let mut g = top.and_then(|t| store.get(&t).cloned());
    drop(store);
    while let Some(cut) = cuts.pop() {
        let store = match g.take() {
            Some(g) => Some(cut.output.mul(&g)?.sum_all()?.backward()?),
            None => None,
        };
        // The stage's activations are no longer needed.
        drop(cut.output);
        hand(Part::Stage(cut.stage), store.as_ref())?;
        if let Some(store) = &store {
            keep_dx(store);
            g = store.get(&cut.input).cloned();
        }
    }
    // Buckets no segment reached are zeros, and still travel.
    for bucket in pending {
        done(bucket, None)?;
    }
    Ok(dx)
}

/// `dense` cut into the buckets' ranges, in `buckets`' order. The ranges must be disjoint and
/// descending, as [`plan`] makes them.
fn slices<'b, 'a>(
    buckets: &'b [Bucket],
    dense: &'a mut [f32],
) -> Result<Vec<(&'b Bucket, &'a mut [f32])>> {
    let mut out = Vec::with_capacity(buckets.len());
    let mut rest = dense;
    let mut base = 0;
    for bucket in buckets.iter().rev() {
        let Range { start, end } = bucket.range.clone();
        if start < base || end > base + rest.len() {
            return Err(ModelError::Gradients(format!(
                "bucket {start}..{end} outside the dense gradient's {base}..{}",
                base + rest.len()
            )));
        }
        let (_, tail) = rest.split_at_mut(start - base);
        let (slice, tail) = tail.split_at_mut(end - start);
        out.push((bucket, slice));
        rest = tail;
        base = end;
    }
    out.reverse();
    Ok(out)
}

/// Copies a tensor's values into `dst`, straight from its memory when it is a contiguous CPU
/// tensor.
pub(crate) fn copy_into(dst: &mut [f32], t: &Tensor) -> Result<()> {
    if t.elem_count() != dst.len() {
        return Err(ModelError::Gradients(format!(
            "a gradient of {} values for {} places",
            t.elem_count(),
            dst.len()
        )));
    }
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(data) = cpu.as_slice::<f32>() {
                dst.copy_from_slice(&data[start..end]);
                return Ok(());
            }
        }
    }
    dst.copy_from_slice(&t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Batch, Classifier, HeadConfig, InputConfig, ModelConfig, SequenceConfig, TransformerConfig,
    };

    fn config(
        sequence: SequenceConfig,
        trained_layers: Option<usize>,
        heads: usize,
    ) -> ModelConfig {
        let bert = serde_json::json!({
            "vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 3, "num_attention_heads": 2,
            "intermediate_size": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 16,
            "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
            "pad_token_id": 0
        });
        ModelConfig {
            input: InputConfig::Embedding {
                vocab_size: 50,
                dim: 8,
                frozen: trained_layers.is_some(),
            },
            transformer: Some(TransformerConfig {
                config: bert,
                trained_layers,
            }),
            sequence,
            heads: vec![
                HeadConfig {
                    num_classes: 2,
                    dropout: 0.1,
                };
                heads
            ],
        }
    }

    /// Rows of different lengths (padding inside attention), each with its dropout key.
    fn batch(labels: &[u32]) -> Batch {
        let rows: [&[u32]; 4] = [&[2, 7, 9, 3], &[2, 9, 9, 11, 40, 3], &[2, 5, 3], &[2, 8, 3]];
        Batch::new(&rows, labels)
            .and_then(|b| b.with_keys(&[10, 11, 12, 13]))
            .expect("a batch")
    }

    /// The summed cross-entropy of every head's rows.
    fn loss(model: &Classifier, batch: &Batch, forward: &crate::model::Forward) -> Tensor {
        let mut total: Option<Tensor> = None;
        for scored in &forward.scored {
            let offset = model.config().head_offset(scored.head) as u32;
            let rows: Vec<usize> = scored
                .rows
                .clone()
                .unwrap_or_else(|| (0..batch.len()).collect());
            let own: Vec<u32> = rows.iter().map(|&r| batch.labels()[r] - offset).collect();
            let targets = Tensor::from_slice(&own, (own.len(), 1), model.device()).unwrap();
            let loss = candle_nn::ops::log_softmax(&scored.logits, 1)
                .and_then(|l| l.gather(&targets, 1))
                .and_then(|l| l.sum_all())
                .unwrap();
            total = Some(match total {
                None => loss,
                Some(t) => (t + loss).unwrap(),
            });
        }
        total.unwrap().neg().unwrap()
    }

    #[test]
    fn the_pass_in_segments_gives_the_whole_graphs_gradients_bit_for_bit() {
        let cases = [
            ("mean head", config(SequenceConfig::MeanPool, None, 1)),
            (
                "BiLSTM head",
                config(
                    SequenceConfig::Bilstm {
                        hidden_dim: 4,
                        layers: 1,
                        dropout: 0.0,
                    },
                    None,
                    1,
                ),
            ),
            (
                "top block only",
                config(SequenceConfig::MeanPool, Some(1), 1),
            ),
            ("two tasks", config(SequenceConfig::MeanPool, None, 2)),
        ];
        for (case, config) in cases {
            let model = Classifier::new(&config, 5).unwrap();
            // With two tasks, label 3 is the second task's.
            let batch = batch(&[0, 1, 1, config.num_classes() as u32 - 1]);

            // One backward pass over the whole graph.
            let whole = model.forward_train_cut(&batch, false).unwrap();
            assert!(whole.cuts.is_empty());
            let store = loss(&model, &batch, &whole).backward().unwrap();
            let mut expected = vec![0f32; model.dense_len()];
            for (name, var) in model
                .groups()
                .iter()
                .filter(|g| g.is_dense())
                .flat_map(|g| &g.params)
            {
                if let Some(g) = store.get(var) {
                    copy_into(&mut expected[model.dense_range(name).unwrap()], g).unwrap();
                }
            }
            let expected_dx = whole
                .leaf
                .as_ref()
                .and_then(|l| store.get(l))
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());

            // In segments, as the step runs it, recording what is handed on and when.
            let cut = model.forward_train(&batch).unwrap();
            let trained = match case {
                "top block only" => 1,
                _ => 4, // the embeddings and three blocks
            };
            assert_eq!(cut.cuts.len(), trained, "{case}");
            let leaf = cut.leaf.as_ref().map(|l| l.as_tensor().clone());
            let loss = loss(&model, &batch, &cut);
            let mut dense = vec![0f32; model.dense_len()];
            let base = dense.as_ptr() as usize;
            let mut handed = Vec::new();
            let dx = backward(
                &model.buckets,
                &loss,
                cut.cuts,
                cut.top,
                leaf.as_ref(),
                &mut dense,
                &mut |b: &mut [f32]| {
                    let start = (b.as_ptr() as usize - base) / 4;
                    handed.push((start..start + b.len(), b.to_vec()));
                },
            )
            .unwrap();
            assert_eq!(dense, expected, "{case}: the dense gradients differ");
            assert_eq!(
                dx.map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
                expected_dx,
                "{case}: the input's gradient differs"
            );
            // Every bucket once, top first, each complete when handed on.
            let ranges: Vec<Range<usize>> = handed.iter().map(|(r, _)| r.clone()).collect();
            assert_eq!(ranges, model.buckets(), "{case}");
            assert_eq!(ranges.len(), 1 + trained, "{case}");
            assert!(ranges.windows(2).all(|w| w[1].end <= w[0].start), "{case}");
            for (range, values) in &handed {
                assert_eq!(values[..], expected[range.clone()], "{case}: {range:?}");
            }
            // Only a frozen group's range is in no bucket, and its gradient is zeros.
            let covered: usize = ranges.iter().map(ExactSizeIterator::len).sum();
            let frozen = match case {
                "top block only" => model.groups()[1].len(),
                _ => 0,
            };
            assert_eq!(covered + frozen, model.dense_len(), "{case}");
            assert!(expected[..frozen].iter().all(|&g| g == 0.0));
        }
    }
}
