//! CSV with a header naming the label and text columns (and, from our own export, `source`).
//!
//! The csv crate ends a quoted field that never closes at the end of the file, without an
//! error: one stray quote would silently make the rest of the file one example. The input is
//! read through [`QuoteWatch`], which follows the same quoting rules and says where such a
//! quote opened.

use std::cell::Cell;
use std::io::{BufReader, Read};
use std::rc::Rc;

use super::{labelled, BadLinePolicy, LoadOptions, Row, Sink, MAX_LINE_BYTES};
use crate::error::DataError;

pub(super) fn read(file: impl Read, sink: &mut Sink, opts: &LoadOptions) -> Result<(), DataError> {
    let quotes = Rc::new(Cell::new(QuoteState::default()));
    let watched = QuoteWatch {
        inner: file,
        state: quotes.clone(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(BufReader::with_capacity(1 << 16, watched));
    // Only meaningful once the whole input went through the watch: read ahead, a quoted
    // field may still close.
    let unclosed = |sink: &Sink| {
        let q = quotes.get();
        q.open_at
            .filter(|_| q.in_quotes)
            .map(|open| DataError::BadLine {
                path: sink.path.clone(),
                line: open,
                msg: "a quote opens here and never closes, so the rest of the file would be one \
                  field; close it, or double it (\"\") to mean the character"
                    .into(),
            })
    };
    // An error at `line` may come of a quote opened before it that never closes: that quote
    // is the one to name.
    let first_cause = |reader: &mut csv::Reader<_>, sink: &Sink, line: u64, err: DataError| {
        if std::io::copy(reader.get_mut(), &mut std::io::sink()).is_err() {
            return err;
        }
        match unclosed(sink) {
            Some(quote) if quotes.get().open_at.is_some_and(|open| open <= line) => quote,
            _ => err,
        }
    };
    let headers = match reader.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(error(&sink.path, 1, &e)),
    };
    let column = |name: &str| headers.iter().position(|h| h == name.as_bytes());
    let missing = |name: &str| DataError::BadLine {
        path: sink.path.clone(),
        line: 1,
        msg: format!(
            "header has no column \"{name}\" (columns: {}); use --text-column/--label-column",
            headers
                .iter()
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let (text, label) = match (column(&opts.text_column), column(&opts.label_column)) {
        (Some(t), Some(l)) => (t, l),
        (t, _) => {
            let name = if t.is_none() {
                &opts.text_column
            } else {
                &opts.label_column
            };
            let err = missing(name);
            return Err(first_cause(&mut reader, sink, 1, err));
        }
    };
    let columns = Fields {
        text,
        label,
        source: column(super::tsv::SOURCE_COLUMN),
    };
    let mut record = csv::ByteRecord::new();
    // The start line of the last record read, and whether it was kept.
    let mut last: Option<(u64, bool)> = None;
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                let parsed = if record.as_slice().len() > MAX_LINE_BYTES {
                    Err(format!("record longer than {MAX_LINE_BYTES} bytes"))
                } else {
                    columns.of(&record)
                };
                let kept = parsed.is_ok();
                if let Err(err) = sink.push(line, parsed) {
                    return Err(first_cause(&mut reader, sink, line, err));
                }
                last = Some((line, kept));
            }
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                if sink.policy == BadLinePolicy::Error {
                    let err = error(&sink.path, line, &e);
                    return Err(first_cause(&mut reader, sink, line, err));
                }
                sink.bad(line, String::new())?;
                last = Some((line, false));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(error(&sink.path, line, &e));
                }
            }
        }
    }
    if let Some(err) = unclosed(sink) {
        if sink.policy == BadLinePolicy::Error {
            return Err(err);
        }
        // The record that holds the quote ran to the end of the file: every line from its
        // start on is a row lost, not one.
        let lines = quotes.get().lines;
        if let Some((start, kept)) = last {
            if kept {
                sink.records.pop();
            } else {
                sink.skipped -= 1;
            }
            sink.skipped += (lines + 1).saturating_sub(start) as usize;
            sink.unclosed_quote = quotes.get().open_at;
        }
    }
    Ok(())
}

struct Fields {
    label: usize,
    text: usize,
    source: Option<usize>,
}

impl Fields {
    fn of(&self, record: &csv::ByteRecord) -> Result<Row, String> {
        let field = |i: usize| -> Result<&str, String> {
            let bytes = record.get(i).unwrap_or_default();
            std::str::from_utf8(bytes).map_err(|e| {
                format!(
                    "invalid UTF-8 at byte {} of field {}",
                    e.valid_up_to() + 1,
                    i + 1
                )
            })
        };
        let mut row = labelled(field(self.label)?, field(self.text)?)?;
        if let Some(i) = self.source {
            row.source = Some(field(i)?.trim().to_string()).filter(|s| !s.is_empty());
        }
        Ok(row)
    }
}

fn error(path: &str, line: u64, e: &csv::Error) -> DataError {
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("malformed CSV: {len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8: {err}"),
        _ => format!("malformed CSV: {e}"),
    };
    DataError::BadLine {
        path: path.to_string(),
        line,
        msg,
    }
}

/// Where the quoting of the bytes read so far stands.
#[derive(Clone, Copy, Debug, Default)]
struct QuoteState {
    /// Inside a quoted field.
    in_quotes: bool,
    /// The last byte was a quote inside a quoted field: it closes it, unless another follows.
    quote_pending: bool,
    /// At the start of a field, where a quote opens a quoted field.
    mid_field: bool,
    /// The line the current (or last) quoted field opened on.
    open_at: Option<u64>,
    /// Newlines seen: the current line is `lines + 1`.
    lines: u64,
}

impl QuoteState {
    /// The csv crate's rules for the default dialect: a quote opens a quoted field only at
    /// the start of a field; inside, `""` is a quote and `"` ends the quoting.
    fn step(&mut self, b: u8) {
        if self.quote_pending {
            self.quote_pending = false;
            if b == b'"' {
                return;
            }
            self.in_quotes = false;
        }
        if self.in_quotes {
            match b {
                b'"' => self.quote_pending = true,
                b'\n' => self.lines += 1,
                _ => {}
            }
            return;
        }
        match b {
            b'"' if !self.mid_field => {
                self.in_quotes = true;
                self.open_at = Some(self.lines + 1);
            }
            b',' | b'\r' => self.mid_field = false,
            b'\n' => {
                self.mid_field = false;
                self.lines += 1;
            }
            _ => self.mid_field = true,
        }
    }
}

struct QuoteWatch<R> {
    inner: R,
    state: Rc<Cell<QuoteState>>,
}

impl<R: Read> Read for QuoteWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.get();
        for &b in &buf[..n] {
            state.step(b);
        }
        if n == 0 && state.quote_pending {
            // A quote as the file's last byte closes its field.
            state.quote_pending = false;
            state.in_quotes = false;
        }
        self.state.set(state);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bytes: &[u8]) -> QuoteState {
        let mut s = QuoteState::default();
        bytes.iter().for_each(|&b| s.step(b));
        s
    }

    #[test]
    fn quotes_are_followed_as_the_csv_crate_reads_them() {
        assert!(!state(b"a,\"b, \"\"c\"\"\"\nd,e\n").in_quotes);
        assert!(!state(b"a,b \"quoted\" mid-field\n").in_quotes);
        assert!(!state(b"a,\"multi\nline\"\n").in_quotes);
        let s = state(b"text,label\nok,a\n\"never closed,b\nc,d\n");
        assert!(s.in_quotes);
        assert_eq!(s.open_at, Some(3));
    }
}
