//! A worker's model and where its training state is held.
//!
//! On the CPU the weights, the gradients and Adam's moments live in host memory, and the step
//! runs the CPU's fused kernels on them. On an accelerator they all live on the device: the
//! weights are the model's own variables there, the gradients stay device tensors, the
//! optimizer updates in place there, and a step sends down only the batch and brings back
//! only the losses and predictions. Checkpoints, recovery broadcasts and evaluation copy the
//! weights out when they need them. The second way also runs on Candle's CPU device, with the
//! ops every device has instead of the CPU's fused kernels, so that the tests check it.

use candle_core::Device;

use crate::model::{Classifier, ModelConfig, ModelError, Result};

/// Where a replica's training state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// In host memory, trained by the CPU's fused kernels.
    Host,
    /// On the model's device, trained by ops every device has.
    Device,
}

impl Held {
    /// Host memory on the CPU, the device otherwise.
    pub fn by_default(device: &Device) -> Self {
        match device.is_cpu() {
            true => Held::Host,
            false => Held::Device,
        }
    }

    /// Where a worker on `device` holds its training state: `SMALLTEXT_HOLD=host|device`, by
    /// default in host memory on the CPU and on the device otherwise. `device` on the CPU runs
    /// the GPU workers' path on Candle's CPU device, for checking it.
    pub fn from_env(device: &Device) -> Result<Self> {
        match std::env::var("SMALLTEXT_HOLD").as_deref() {
            Err(std::env::VarError::NotPresent) => Ok(Self::by_default(device)),
            Ok("host") if device.is_cpu() => Ok(Held::Host),
            Ok("device") => Ok(Held::Device),
            Ok("host") => Err(ModelError::Config(
                "SMALLTEXT_HOLD=host: training state held in host memory needs --device cpu".into(),
            )),
            Ok(other) => Err(ModelError::Config(format!(
                "SMALLTEXT_HOLD={other}: expected `host` or `device`"
            ))),
            Err(e) => Err(ModelError::Config(format!("SMALLTEXT_HOLD: {e}"))),
        }
    }
}

pub struct Replica {
    model: Classifier,
    held: Held,
}

impl Replica {
    /// The model of `config` initialised from `seed` (on the host, as on every worker, so that
    /// every device starts from the same weights), held on the host on the CPU and on the
    /// device otherwise.
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::held(config, seed, device, Held::by_default(device))
    }

    /// As [`Replica::new`], held as `held` says: [`Held::Device`] on the CPU runs the device
    /// path on Candle's CPU device.
    pub fn held(config: &ModelConfig, seed: u64, device: &Device, held: Held) -> Result<Self> {
        if held == Held::Host && !device.is_cpu() {
            return Err(ModelError::Config(format!(
                "training state held on the host needs the CPU, not {device:?}"
            )));
        }
        let host = Classifier::new(config, seed)?;
        let model = match held {
            Held::Host => host,
            Held::Device => {
                let mut model = Classifier::new_on(config, seed, device)?;
                model.copy_weights_from(&host)?;
                model.use_portable_ops();
                model
            }
        };
        Ok(Self { model, held })
    }

    /// The model: its weights are the master weights, wherever they are held.
    pub fn model(&self) -> &Classifier {
        &self.model
    }

    /// Where the training state lives.
    pub fn where_held(&self) -> Held {
        self.held
    }

    /// `opt`, with its moments moved to where this replica holds its training state.
    pub fn hold(&self, mut opt: super::Adam) -> Result<super::Adam> {
        if self.held == Held::Device {
            opt.hold_on_device(self.model.groups())?;
        }
        Ok(opt)
    }

    /// The weights as safetensors bytes, copied out of the device where they are held there.
    pub fn weights_bytes(&self) -> Result<Vec<u8>> {
        self.count_copy();
        self.model.to_bytes()
    }

    /// The pieces of [`Replica::weights_bytes`], each tensor copied out when its turn comes.
    pub fn weights_pieces(&self) -> Result<Vec<crate::model::persist::Piece<'static>>> {
        self.count_copy();
        self.model.to_pieces()
    }

    fn count_copy(&self) {
        if self.held == Held::Device {
            super::transfers::count(super::transfers::Cargo::Weights);
        }
    }

    /// Replaces the weights with those in `bytes` (safetensors).
    pub fn load_weights_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.count_copy();
        self.model.load_weights_bytes(bytes)
    }

    /// Sets the encoder's weights to the pretrained `tensors` (Hugging Face's names).
    pub fn load_encoder_weights(
        &mut self,
        tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        self.model.load_encoder_weights(tensors)
    }

    /// Gives the model the frozen encoder whose vectors it reads.
    pub fn attach_encoder(
        &mut self,
        encoder: std::sync::Arc<crate::encoder::Encoder>,
    ) -> Result<()> {
        self.model.attach_encoder(encoder)
    }
}
