//! Reading labelled examples from TSV (`label<TAB>text`, optionally under a header line), CSV
//! with a header, and JSON lines.
//!
//! Every bad line is an error naming `file:line`, unless the caller asks to skip bad lines,
//! in which case they are counted and reported.

mod csv;
mod tsv;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Longest line (or CSV record) accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Tsv,
    Csv,
    Jsonl,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Format, DataError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if let Some(format) = ext.as_deref().and_then(Self::from_extension) {
            return Ok(format);
        }
        // `train.tsv:x`: a source weight that is not a number reads as part of the file name.
        let typo = path
            .to_str()
            .and_then(|s| s.rsplit_once(':'))
            .filter(|(file, _)| {
                Path::new(file)
                    .extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| Self::from_extension(&e.to_ascii_lowercase()))
                    .is_some()
            });
        match typo {
            Some((file, weight)) => Err(DataError::Config(format!(
                "{}: cannot tell the format from the extension; if `{weight}` was meant as a \
                 --data source's weight, it must be a positive number (PATH:WEIGHT, e.g. {file}:2)",
                path.display()
            ))),
            None => Err(DataError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    fn from_extension(ext: &str) -> Option<Format> {
        match ext {
            "tsv" | "txt" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BadLinePolicy {
    /// Stop at the first bad line with an error naming it.
    #[default]
    Error,
    /// Skip bad lines and report how many per file.
    Skip,
}

/// How to read a data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub format: Option<Format>,
    pub text_column: String,
    pub label_column: String,
    pub on_bad_line: BadLinePolicy,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: None,
            text_column: "text".into(),
            label_column: "label".into(),
            on_bad_line: BadLinePolicy::Error,
        }
    }
}

/// One labelled line of a file; `line` is 1-based and, with the file, identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: u32,
    pub label: String,
    pub text: String,
    /// The example's source as our own export (`data export --with-source`) recorded it: a
    /// `source` column (TSV under a header naming it, CSV) or key (JSON lines).
    pub source: Option<String>,
}

/// What a line holds, before it is numbered.
#[derive(Debug)]
struct Row {
    label: String,
    text: String,
    source: Option<String>,
}

#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub records: Vec<Record>,
    /// Bad lines skipped under [`BadLinePolicy::Skip`], counting every line an unclosed
    /// quote took with it.
    pub skipped: usize,
    /// The column names of a header line, when the first line of a TSV file was one.
    pub header: Option<Vec<String>>,
}

/// Refuses a directory where a data file is expected, saying so (opening one fails later
/// with the system's terse "Is a directory").
pub fn not_a_directory(path: &Path) -> Result<(), DataError> {
    if path.is_dir() {
        return Err(DataError::Config(format!(
            "{} is a directory, not a data file: name a .tsv, .csv or .jsonl file in it",
            path.display()
        )));
    }
    Ok(())
}

/// Reads every example of `path`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, DataError> {
    not_a_directory(path)?;
    let format = match opts.format {
        Some(f) => f,
        None => Format::from_path(path)?,
    };
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io(&shown, e))?;
    let mut loaded = load_from(file, &shown, format, opts)?;
    loaded.path = path.to_path_buf();
    Ok(loaded)
}

/// Reads every example of `input` in `format`; errors name the input `name`.
pub fn load_from(
    input: impl Read,
    name: &str,
    format: Format,
    opts: &LoadOptions,
) -> Result<Loaded, DataError> {
    let shown = name.to_string();
    let file = input;
    let mut sink = Sink {
        path: shown.clone(),
        policy: opts.on_bad_line,
        records: Vec::new(),
        skipped: 0,
        unclosed_quote: None,
    };
    let mut header = None;
    match format {
        Format::Tsv => {
            let mut columns = tsv::Columns::default();
            read_lines(file, &mut sink, |line_no, line| {
                if line_no == 1 {
                    if let Some(found) = tsv::Columns::header(line) {
                        tracing::info!(
                            "{shown}:1: a header line ({}), not an example: skipped",
                            found.names().join(", ")
                        );
                        header = Some(found.names().to_vec());
                        columns = found;
                        return None;
                    }
                }
                Some(columns.parse(line))
            })?
        }
        Format::Jsonl => read_lines(file, &mut sink, |_, line| {
            Some(parse_json(line, &opts.text_column, &opts.label_column))
        })?,
        Format::Csv => csv::read(file, &mut sink, opts)?,
    }
    if sink.skipped > 0 {
        match sink.unclosed_quote {
            Some(open) => tracing::warn!(
                "{shown}: skipped {} bad lines, most of them after the quote opened on line \
                 {open} that never closes",
                sink.skipped
            ),
            None => tracing::warn!("{shown}: skipped {} bad lines", sink.skipped),
        }
    }
    if sink.records.is_empty() {
        return Err(DataError::Empty { path: shown });
    }
    Ok(Loaded {
        path: PathBuf::from(name),
        records: sink.records,
        skipped: sink.skipped,
        header,
    })
}

/// Collects records and applies the bad-line policy in one place.
struct Sink {
    path: String,
    policy: BadLinePolicy,
    records: Vec<Record>,
    skipped: usize,
    /// Where the quote that swallowed the end of a CSV file opened, when one did.
    unclosed_quote: Option<u64>,
}

impl Sink {
    fn push(&mut self, line: u64, parsed: Result<Row, String>) -> Result<(), DataError> {
        match parsed {
            Ok(Row {
                label,
                text,
                source,
            }) => {
                let line = u32::try_from(line).map_err(|_| DataError::BadLine {
                    path: self.path.clone(),
                    line,
                    msg: "file has more than 4 billion lines".into(),
                })?;
                self.records.push(Record {
                    line,
                    label,
                    text,
                    source,
                });
                Ok(())
            }
            Err(msg) => self.bad(line, msg),
        }
    }

    fn bad(&mut self, line: u64, msg: String) -> Result<(), DataError> {
        match self.policy {
            BadLinePolicy::Skip => {
                self.skipped += 1;
                Ok(())
            }
            BadLinePolicy::Error => Err(DataError::BadLine {
                path: self.path.clone(),
                line,
                msg,
            }),
        }
    }
}

/// Reads newline-separated lines without ever holding more than [`MAX_LINE_BYTES`] of one.
/// `parse` gets the line number and the line, and answers `None` for a line that holds no
/// example and is no error (a header).
fn read_lines(
    file: impl Read,
    sink: &mut Sink,
    mut parse: impl FnMut(u64, &str) -> Option<Result<Row, String>>,
) -> Result<(), DataError> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(&sink.path, e))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if !buf.ends_with(b"\n") && buf.len() > MAX_LINE_BYTES {
            skip_rest_of_line(&mut reader).map_err(|e| DataError::io(&sink.path, e))?;
            sink.bad(line_no, format!("line longer than {MAX_LINE_BYTES} bytes"))?;
            continue;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if buf.len() > MAX_LINE_BYTES {
            sink.bad(line_no, format!("line longer than {MAX_LINE_BYTES} bytes"))?;
            continue;
        }
        let parsed = match std::str::from_utf8(&buf) {
            Ok(line) if line_no == 1 => parse(line_no, super::strip_byte_order_mark(line)),
            Ok(line) => parse(line_no, line),
            Err(e) => Some(Err(format!(
                "invalid UTF-8 at byte {} of the line",
                e.valid_up_to() + 1
            ))),
        };
        if let Some(parsed) = parsed {
            sink.push(line_no, parsed)?;
        }
    }
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        if let Some(pos) = available.iter().position(|&b| b == b'\n') {
            reader.consume(pos + 1);
            return Ok(());
        }
        let len = available.len();
        reader.consume(len);
    }
}

fn labelled(label: &str, text: &str) -> Result<Row, String> {
    let (label, text) = (label.trim(), text.trim());
    if label.is_empty() {
        return Err("empty label".into());
    }
    if text.is_empty() {
        return Err("empty text".into());
    }
    Ok(Row {
        label: label.to_string(),
        text: text.to_string(),
        source: None,
    })
}

fn parse_json(line: &str, text_key: &str, label_key: &str) -> Result<Row, String> {
    if line.trim().is_empty() {
        return Err("empty line (expected a JSON object)".into());
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let text = match obj.get(text_key) {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("field \"{text_key}\" is not a string")),
        None => return Err(format!("missing field \"{text_key}\"")),
    };
    let label = match obj.get(label_key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::Bool(b)) => b.to_string(),
        Some(_) => return Err(format!("field \"{label_key}\" is not a string or number")),
        None => return Err(format!("missing field \"{label_key}\"")),
    };
    let mut row = labelled(&label, text)?;
    row.source = match obj.get(tsv::SOURCE_COLUMN) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        path
    }

    fn err(path: &Path) -> String {
        load(path, &LoadOptions::default()).unwrap_err().to_string()
    }

    #[test]
    fn a_weight_that_is_not_a_number_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = write(&dir, "a.tsv", b"pos\tgood film\n");
        let typo = PathBuf::from(format!("{}:abc", tsv.display()));
        let msg = err(&typo);
        assert!(
            msg.contains("if `abc` was meant as a --data source's weight"),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}:2", tsv.display())), "{msg}");
        // Without a known format before the colon it stays a format question.
        let msg = err(&dir.path().join("notes:abc"));
        assert!(msg.contains("cannot tell the format"), "{msg}");
    }

    #[test]
    fn reads_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = write(&dir, "a.tsv", b"pos\tgood film\r\nneg\tbad film\n");
        let got = load(&tsv, &LoadOptions::default()).unwrap();
        assert_eq!(
            got.records[0],
            Record {
                line: 1,
                label: "pos".into(),
                text: "good film".into(),
                source: None,
            }
        );
        assert_eq!(got.records[1].text, "bad film");
        let csv = write(
            &dir,
            "a.csv",
            b"id,label,text\n1,pos,\"good, film\"\n2,neg,bad\n",
        );
        let got = load(&csv, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[0].text, "good, film");
        assert_eq!(got.records[1].line, 3);
        let jsonl = write(
            &dir,
            "a.jsonl",
            b"{\"text\": \"fine\", \"label\": 1}\n{\"label\":\"x\",\"text\":\"y\"}\n",
        );
        let got = load(&jsonl, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[0].label, "1");
        assert_eq!(got.records[1].label, "x");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        // Excel and Notepad start UTF-8 files with one; it must not become a label of its own.
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8]); 3] = [
            ("b.tsv", b"\xef\xbb\xbfpos\tgood film\nneg\tbad\n"),
            (
                "b.jsonl",
                b"\xef\xbb\xbf{\"text\": \"good film\", \"label\": \"pos\"}\n",
            ),
            ("b.csv", b"\xef\xbb\xbftext,label\ngood film,pos\n"),
        ];
        for (name, bytes) in cases {
            let got = load(&write(&dir, name, bytes), &LoadOptions::default()).unwrap();
            assert_eq!(got.records[0].label, "pos", "{name}");
            assert_eq!(got.records[0].text, "good film", "{name}");
        }
        // Only at the start of the file: elsewhere it is text like any other.
        let later = write(&dir, "c.tsv", b"pos\tok\n\xef\xbb\xbfneg\tbad\n");
        let got = load(&later, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[1].label, "\u{feff}neg");
    }

    #[test]
    fn csv_columns_can_be_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(&dir, "r.csv", b"sentence,y\nhello,a\n");
        let opts = LoadOptions {
            text_column: "sentence".into(),
            label_column: "y".into(),
            ..Default::default()
        };
        assert_eq!(load(&csv, &opts).unwrap().records[0].text, "hello");
        assert!(err(&csv).contains("r.csv:1: header has no column \"text\""));
    }

    #[test]
    fn every_bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "bad.tsv",
                b"a\tok\nno separator\n".to_vec(),
                "bad.tsv:2: no tab",
            ),
            (
                "empty_text.tsv",
                b"a\tok\nb\t  \n".to_vec(),
                "empty_text.tsv:2: empty text",
            ),
            (
                "empty_label.tsv",
                b"a\tok\n\tx\n".to_vec(),
                "empty_label.tsv:2: empty label",
            ),
            (
                "utf8.tsv",
                b"a\tok\na\tb\xff\n".to_vec(),
                "utf8.tsv:2: invalid UTF-8",
            ),
            (
                "bad.jsonl",
                b"{\"text\":\"a\",\"label\":\"b\"}\n{\"text\": \n".to_vec(),
                "bad.jsonl:2: malformed JSON",
            ),
            (
                "nolabel.jsonl",
                b"{\"text\":\"a\"}\n".to_vec(),
                "nolabel.jsonl:1: missing field \"label\"",
            ),
            (
                "bad.csv",
                b"text,label\na,b\nc,d,e\n".to_vec(),
                "bad.csv:3: malformed CSV",
            ),
            (
                "utf8.csv",
                b"text,label\na,b\nc\xfe,d\n".to_vec(),
                "utf8.csv:3: invalid UTF-8",
            ),
        ];
        for (name, bytes, want) in cases {
            let path = write(&dir, name, &bytes);
            let got = err(&path);
            assert!(got.contains(want), "{name}: got {got:?}, want {want:?}");
        }
        let mut long = b"a\tok\nb\t".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        long.extend(b"\nc\tfine\n");
        let path = write(&dir, "long.tsv", &long);
        assert!(err(&path).contains("long.tsv:2: line longer than"));
    }

    #[test]
    fn skip_counts_bad_lines_and_keeps_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"a\tone\nbroken\nb\t\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 1));
        bytes.extend(b"\nc\tthree\n");
        let path = write(&dir, "mixed.tsv", &bytes);
        let opts = LoadOptions {
            on_bad_line: BadLinePolicy::Skip,
            ..Default::default()
        };
        let got = load(&path, &opts).unwrap();
        assert_eq!(got.skipped, 3);
        let lines: Vec<u32> = got.records.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![1, 5]);
    }

    fn skipping() -> LoadOptions {
        LoadOptions {
            on_bad_line: BadLinePolicy::Skip,
            ..Default::default()
        }
    }

    #[test]
    fn a_tsv_header_line_is_skipped_not_trained() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "h.tsv", b"label\ttext\npos\tgood film\nneg\tbad\n");
        let got = load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(got.header, Some(vec!["label".into(), "text".into()]));
        let labels: Vec<&str> = got.records.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["pos", "neg"]);
        assert_eq!(got.records[0].line, 2);
        // Swapped columns follow the header.
        let path = write(
            &dir,
            "s.tsv",
            b"\xef\xbb\xbfSentence\tClass\ngood film\tpos\n",
        );
        let got = load(&path, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[0].label, "pos");
        // A first line of data stays data.
        let path = write(
            &dir,
            "d.tsv",
            b"DESC\tWhat is a text ?\nENTY\tWhat films ?\n",
        );
        let got = load(&path, &LoadOptions::default()).unwrap();
        assert_eq!((got.header, got.records.len()), (None, 2));
    }

    #[test]
    fn an_extra_tsv_column_is_an_error_except_our_exports_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "x.tsv", b"pos\tgood\nneg\tbad\tfilm\nneg\tworse\n");
        let msg = err(&path);
        assert!(msg.contains("x.tsv:2: 3 tab-separated fields"), "{msg}");
        let got = load(&path, &skipping()).unwrap();
        assert_eq!((got.skipped, got.records.len()), (1, 2));
        let export = write(
            &dir,
            "e.tsv",
            b"label\ttext\tsource\npos\tgood\ta.tsv\nneg\tbad\tb.tsv\n",
        );
        let got = load(&export, &LoadOptions::default()).unwrap();
        let sources: Vec<_> = got.records.iter().map(|r| r.source.as_deref()).collect();
        assert_eq!(sources, [Some("a.tsv"), Some("b.tsv")]);
        assert_eq!(got.records[1].text, "bad");
        let csv = write(&dir, "e.csv", b"label,text,source\npos,good,a.tsv\n");
        let got = load(&csv, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[0].source.as_deref(), Some("a.tsv"));
        let jsonl = write(
            &dir,
            "e.jsonl",
            b"{\"label\":\"pos\",\"text\":\"good\",\"source\":\"a.tsv\"}\n",
        );
        let got = load(&jsonl, &LoadOptions::default()).unwrap();
        assert_eq!(got.records[0].source.as_deref(), Some("a.tsv"));
    }

    #[test]
    fn an_unclosed_csv_quote_is_named_where_it_opens_and_counts_every_row_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"label,text\n".to_vec();
        for i in 0..20 {
            bytes.extend(format!("a,row {i}\n").as_bytes());
        }
        bytes.extend(b"b,\"opens here\n");
        for i in 0..29 {
            bytes.extend(format!("a,later {i}\n").as_bytes());
        }
        let path = write(&dir, "q.csv", &bytes);
        let msg = err(&path);
        assert!(
            msg.contains("q.csv:22: a quote opens here and never closes"),
            "{msg}"
        );
        let got = load(&path, &skipping()).unwrap();
        assert_eq!(got.records.len(), 20);
        assert_eq!(got.skipped, 30, "the quoted row and the 29 after it");
        // Quoted fields that close, over several lines or with doubled quotes, are fine.
        let ok = write(
            &dir,
            "ok.csv",
            b"label,text\na,\"two\nlines\"\nb,\"say \"\"hi\"\"\"\nc,a \"mid\" quote\n",
        );
        let got = load(&ok, &LoadOptions::default()).unwrap();
        assert_eq!(got.records.len(), 3);
        assert_eq!(got.records[1].text, "say \"hi\"");
        // An unclosed quote whose record has too few fields still names the quote.
        let short = write(&dir, "s.csv", b"label,text,id\na,b,1\n\"c,d,2\ne,f,3\n");
        let msg = err(&short);
        assert!(msg.contains("s.csv:3: a quote opens here"), "{msg}");
    }

    #[test]
    fn unknown_extension_and_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "data.xml", b"<a/>");
        assert!(err(&path).contains("--format"));
        assert!(err(&dir.path().join("missing.tsv")).contains("missing.tsv"));
    }
}
