//! The training step every worker runs, whichever way its replica holds the training state: in
//! host memory (`step.rs`) or on its device (`step_device.rs`).

use super::adam::Adam;
use super::replica::{Held, Replica};
use super::step::{train_share_on_host, Share, StepError, StepReport};
use super::step_device;
use super::tally::Tally;
use crate::collective::Collective;
use crate::model::{Batch, ModelError};

/// One optimizer step of a data-parallel run, for a worker holding `batch` (or none, when it
/// holds no example of the step: it still joins the all-reduce) in a world of one slot per
/// worker. See [`train_share`].
pub fn train_step(
    replica: &Replica,
    opt: &mut Adam,
    collective: &mut dyn Collective,
    batch: Option<&Batch>,
    global_batch_size: usize,
    class_weights: Option<&[f32]>,
    tally: Option<&Tally<'_>>,
) -> std::result::Result<StepReport, StepError> {
    let share = Share::own(collective, batch);
    train_share(
        replica,
        opt,
        collective,
        &share,
        global_batch_size,
        class_weights,
        tally,
    )
}

/// One optimizer step of a data-parallel run. The gradients of each slot in `share` are
/// computed on their own and summed across the workers by `collective` (over all the run's
/// slots, in the order a world of one worker per slot adds them), divided by
/// `global_batch_size`, clipped if the optimizer says so, and applied to the replica's weights,
/// where the replica holds them. Every worker applies the same sums, so every
/// replica holds the same weights after every step. With a `tally`, the step's figures are
/// summed across the workers too (see [`Tally`]; its groups follow the hosted examples in slot
/// order). If an all-reduce fails, the weights are untouched.
pub fn train_share(
    replica: &Replica,
    opt: &mut Adam,
    collective: &mut dyn Collective,
    share: &Share<'_>,
    global_batch_size: usize,
    class_weights: Option<&[f32]>,
    tally: Option<&Tally<'_>>,
) -> Result<StepReport, StepError> {
    if global_batch_size == 0 {
        return Err(ModelError::Batch("global batch size 0".into()).into());
    }
    let path = match replica.where_held() {
        Held::Host => train_share_on_host,
        Held::Device => step_device::train_share,
    };
    path(
        replica,
        opt,
        collective,
        share,
        global_batch_size,
        class_weights,
        tally,
    )
}
