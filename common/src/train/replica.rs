//! A worker's model when it computes on an accelerator: the master weights and Adam's state
//! stay on the host, where the all-reduced gradients arrive (sparse embedding rows included)
//! and the update is applied exactly as on a CPU worker; a copy on the device runs forward and
//! backward and is refreshed from the host after every optimizer step. On the CPU the two are
//! one model.
//!
//! The copy costs one host-to-device transfer of the weights a step (about 6 MB for the
//! default model on TREC), small beside the step on an H200 and simple to get right: every
//! replica of a run, CPU or GPU, applies the same update to the same host weights.

use candle_core::Device;

use crate::model::{Classifier, ModelConfig, Result};

pub struct Replica {
    host: Classifier,
    device: Option<Classifier>,
}

impl Replica {
    /// The model of `config` initialised from `seed` (on the host, as on every worker), with a
    /// copy on `device` unless that is the CPU.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let host = Classifier::new(config, seed)?;
        let device = if device.is_cpu() {
            None
        } else {
            let copy = Classifier::new_on(config, seed, device)?;
            copy.copy_weights_from(&host)?;
            Some(copy)
        };
        Ok(Self { host, device })
    }

    /// The master weights: what the optimizer updates and checkpoints save.
    pub fn host(&self) -> &Classifier {
        &self.host
    }

    /// The model that runs forward and backward.
    pub fn compute(&self) -> &Classifier {
        self.device.as_ref().unwrap_or(&self.host)
    }

    /// Replaces the weights with those in `bytes` (safetensors), on the host and the device.
    pub fn load_weights_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.host.load_weights_bytes(bytes)?;
        self.sync()
    }

    /// Sets the encoder's weights to the pretrained `tensors` (Hugging Face's names), on the
    /// host and the device.
    pub fn load_encoder_weights(
        &mut self,
        tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        self.host.load_encoder_weights(tensors)?;
        self.sync()
    }

    /// Gives the model that runs forward the frozen encoder whose vectors it reads.
    pub fn attach_encoder(
        &mut self,
        encoder: std::sync::Arc<crate::encoder::Encoder>,
    ) -> Result<()> {
        match &mut self.device {
            Some(copy) => copy.attach_encoder(encoder),
            None => self.host.attach_encoder(encoder),
        }
    }

    /// Brings the device copy up to date with the host weights (after an optimizer step or a
    /// weight load); nothing to do on the CPU.
    pub fn sync(&self) -> Result<()> {
        match &self.device {
            Some(copy) => copy.copy_weights_from(&self.host),
            None => Ok(()),
        }
    }
}
