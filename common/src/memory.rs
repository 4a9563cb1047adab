//! How much memory an epoch will take, told before it is made: `--num-aug 1000000` must be a
//! clear refusal, not a machine swapping until the kernel's OOM killer ends the run.

use crate::error::DataError;

/// Bytes one sentence of an epoch costs the coordinator, beyond its tokens: the item, its
/// encoded example and their vectors' headers. With [`BYTES_PER_TOKEN`], calibrated on the
/// peak memory of `data export` of TREC with EDA (bench/epoch_memory.sh).
pub const BYTES_PER_ITEM: u64 = 200;
/// Bytes per token of a sentence of an epoch: the token (borrowed from its document, or owned
/// when character noise changed it), its id, and its share of the shards sent to workers.
pub const BYTES_PER_TOKEN: u64 = 36;

/// What an epoch would hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochEstimate {
    /// Sentences after augmentation and balance.
    pub items: u64,
    /// Mean tokens per sentence.
    pub tokens_per_item: f64,
}

impl EpochEstimate {
    pub fn bytes(&self) -> u64 {
        let per_item = BYTES_PER_ITEM as f64 + BYTES_PER_TOKEN as f64 * self.tokens_per_item;
        (self.items as f64 * per_item).min(u64::MAX as f64) as u64
    }
}

/// Memory the kernel says is available now (`MemAvailable`), in bytes.
pub fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The budget when none is given: half of what is available, leaving the rest to the
/// workers and everything else on the machine.
pub fn default_budget() -> Option<u64> {
    available().map(|a| a / 2)
}

/// Refuses an epoch estimated beyond `budget`, with the numbers and the ways out.
pub fn check(
    estimate: &EpochEstimate,
    budget: u64,
    how: &str,
    given: bool,
) -> Result<(), DataError> {
    let need = estimate.bytes();
    if need <= budget {
        return Ok(());
    }
    let whose = if given {
        "the --memory-budget".to_string()
    } else {
        "the memory budget (half of the memory available now)".to_string()
    };
    Err(DataError::Config(format!(
        "an epoch would hold about {} sentences ({how}), about {} in memory, more than {whose} \
         of {}: lower --num-aug or the balance target, or give --memory-budget SIZE (e.g. {}) \
         if the machine has the memory",
        estimate.items,
        human(need),
        human(budget),
        human(need.saturating_mul(2)),
    )))
}

/// `1.5G`, `300M`, `12K`: what [`crate::values::byte_size`] reads back.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v >= 100.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_beyond_the_budget_is_refused_with_the_numbers() {
        let e = EpochEstimate {
            items: 300_000_000,
            tokens_per_item: 10.0,
        };
        assert!(e.bytes() > 100 << 30);
        let msg = check(&e, 8 << 30, "300 rows × (1 + 1000000 augmentations)", false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("about 300000000 sentences"), "{msg}");
        assert!(
            msg.contains("of 8.0G") && msg.contains("--memory-budget"),
            "{msg}"
        );
        assert!(check(&e, u64::MAX, "", true).is_ok());
        assert_eq!(human(1536 << 20), "1.5G");
        assert_eq!(human(512), "512");
    }

    #[test]
    fn the_kernel_says_what_is_available() {
        let a = available().expect("/proc/meminfo");
        assert!(a > 1 << 20);
        assert!(default_budget().is_some_and(|b| b > 0));
    }
}
