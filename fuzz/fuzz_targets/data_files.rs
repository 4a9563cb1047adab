//! The dataset parsers (TSV, JSON lines, CSV; bad lines as errors and skipped) on any bytes.
#![no_main]

use common::data::load::{load_from, BadLinePolicy, Format, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Tsv, Format::Jsonl, Format::Csv] {
        for on_bad_line in [BadLinePolicy::Error, BadLinePolicy::Skip] {
            let opts = LoadOptions {
                format: Some(format),
                on_bad_line,
                ..LoadOptions::default()
            };
            if let Ok(loaded) = load_from(data, "fuzz", format, &opts) {
                assert!(!loaded.records.is_empty());
                for r in &loaded.records {
                    assert!(!r.label.is_empty() && !r.text.is_empty());
                }
            }
        }
    }
});
