//! Class balance by new augmentations (`--balance augment`), beside the resampler's copies:
//! each class is brought to its target with augmentations of its own examples, made
//! deterministically per (seed, example, epoch, round).

use std::borrow::Cow;
use std::collections::HashSet;

use rand::seq::SliceRandom;

use crate::augment::{chars, AugmentPlan};
use crate::data::{Doc, Item};
use crate::rng::{stream, tag};

/// Brings each class of `items` to its target with new augmentations of its own examples
/// (numbered after the plan's `num_aug`), avoiding exact duplicates as long as the synonyms
/// allow, then with copies of the class's sentences. `labels` name the classes in the log.
pub fn fill<'a>(
    items: &mut Vec<Item<'a>>,
    targets: &[Option<usize>],
    plan: &AugmentPlan,
    seed: u64,
    epoch: u64,
    labels: &[String],
) {
    let first_extra = plan.num_aug as u64 + 1;
    for (class, target) in targets.iter().enumerate() {
        let Some(target) = *target else { continue };
        let class = class as u32;
        let mut members: Vec<&Doc> = items
            .iter()
            .filter(|it| it.aug == 0 && it.label() == class)
            .map(|it| it.doc)
            .collect();
        if members.is_empty() {
            continue;
        }
        members.sort_by_key(|d| d.id);
        members.dedup_by_key(|d| d.id);
        members.shuffle(&mut stream(&[
            seed,
            tag::BALANCE_AUGMENT,
            epoch,
            class as u64,
        ]));
        let mut existing: HashSet<Vec<Cow<'a, str>>> = items
            .iter()
            .filter(|it| it.label() == class)
            .map(|it| it.tokens.clone())
            .collect();
        let mut have = items.iter().filter(|it| it.label() == class).count();
        let budget = (target.saturating_sub(have)) * 20;
        let mut attempt = 0usize;
        while have < target && attempt < budget {
            let doc = members[attempt % members.len()];
            let round = (attempt / members.len()) as u64;
            let words: Vec<&str> = doc.tokens.iter().map(String::as_str).collect();
            let mut rng = stream(&[
                seed,
                tag::BALANCE_AUGMENT,
                doc.id.source as u64,
                doc.id.line as u64,
                epoch,
                round,
            ]);
            let mut noise = chars::noise_stream(
                seed,
                &[
                    doc.id.source as u64,
                    doc.id.line as u64,
                    epoch,
                    first_extra + round,
                ],
            );
            let tokens = plan.one(&words, &mut rng, &mut noise);
            if existing.insert(tokens.clone()) {
                items.push(Item {
                    doc,
                    aug: (first_extra + round) as u32,
                    tokens,
                });
                have += 1;
            }
            attempt += 1;
        }
        if have < target {
            tracing::debug!(
                "class {}: {} exact copies where augmentation ran out of new sentences",
                labels[class as usize],
                target - have
            );
            let mut rng = stream(&[seed, tag::BALANCE, epoch, class as u64]);
            let pool: Vec<Item<'a>> = items
                .iter()
                .filter(|it| it.label() == class)
                .cloned()
                .collect();
            while have < target {
                if let Some(it) = pool.choose(&mut rng) {
                    items.push(it.clone());
                }
                have += 1;
            }
        }
    }
}
