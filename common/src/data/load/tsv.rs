//! `label<TAB>text` lines, with an optional header line and the `source` column our own
//! export writes.

use super::{labelled, Row};

/// Words that name a label column in a header line.
const LABEL_NAMES: &[&str] = &["label", "labels", "class", "category", "target", "y"];
/// Words that name a text column in a header line.
const TEXT_NAMES: &[&str] = &[
    "text",
    "sentence",
    "sentences",
    "review",
    "question",
    "document",
    "tweet",
    "comment",
    "content",
];
/// The third column `data export --with-source` writes, under a header that names it.
pub const SOURCE_COLUMN: &str = "source";

/// Where each field of a line goes, as the header (or the default `label<TAB>text`) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    label: usize,
    text: usize,
    source: Option<usize>,
    names: Vec<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            label: 0,
            text: 1,
            source: None,
            names: Vec::new(),
        }
    }
}

impl Columns {
    /// The header a first line is, if it is one: two or three fields, each a known column
    /// name, one naming the label and one the text, and at most a `source` beside them. A
    /// data row of two such words (`class<TAB>category`) is not a header: it has no text name.
    pub fn header(line: &str) -> Option<Columns> {
        let fields: Vec<String> = line.split('\t').map(|f| f.trim().to_lowercase()).collect();
        if !(2..=3).contains(&fields.len()) {
            return None;
        }
        let find = |names: &[&str]| {
            let mut hits = fields
                .iter()
                .enumerate()
                .filter(|(_, f)| names.contains(&f.as_str()));
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        };
        let label = find(LABEL_NAMES)?;
        let text = find(TEXT_NAMES)?;
        let source = find(&[SOURCE_COLUMN]);
        let known = 2 + usize::from(source.is_some());
        (known == fields.len()).then_some(Columns {
            label,
            text,
            source,
            names: fields,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn width(&self) -> usize {
        2 + usize::from(self.source.is_some())
    }

    /// One data line, split as the columns say; a field too many or too few is an error
    /// (a tab inside the text would otherwise silently become part of it).
    pub fn parse(&self, line: &str) -> Result<Row, String> {
        if line.trim().is_empty() {
            return Err("empty line (expected label<TAB>text)".into());
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() == 1 {
            return Err("no tab separator (expected label<TAB>text)".into());
        }
        if fields.len() != self.width() {
            let expected = match self.source {
                Some(_) => "the header's three columns".to_string(),
                None => "2 (label<TAB>text)".to_string(),
            };
            return Err(format!(
                "{} tab-separated fields where {expected} are expected; a tab inside the \
                 text must be replaced (a third `source` column is read only under a header \
                 line naming it, as `data export --with-source` writes)",
                fields.len()
            ));
        }
        let mut row = labelled(fields[self.label], fields[self.text])?;
        if let Some(i) = self.source {
            let source = fields[i].trim();
            if source.is_empty() {
                return Err("empty source".into());
            }
            row.source = Some(source.to_string());
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_names_a_label_and_a_text_column() {
        let c = Columns::header("label\ttext").unwrap();
        assert_eq!((c.label, c.text, c.source), (0, 1, None));
        let c = Columns::header("Sentence\tClass").unwrap();
        assert_eq!((c.label, c.text), (1, 0));
        let c = Columns::header("label\ttext\tsource").unwrap();
        assert_eq!(c.source, Some(2));
        for line in [
            "DESC\tHow did serfdom develop ?",
            "class\tcategory",
            "label\ttext\tid",
            "label",
            "label\ttext\tsource\tx",
        ] {
            assert_eq!(Columns::header(line), None, "{line}");
        }
    }

    #[test]
    fn fields_follow_the_header() {
        let c = Columns::header("text\tlabel\tsource").unwrap();
        let row = c.parse("good film\tpos\ta.tsv").unwrap();
        assert_eq!(
            (row.label.as_str(), row.text.as_str(), row.source.as_deref()),
            ("pos", "good film", Some("a.tsv"))
        );
        assert!(c
            .parse("good film\tpos")
            .unwrap_err()
            .contains("2 tab-separated"));
        let msg = Columns::default().parse("pos\tgood\tfilm").unwrap_err();
        assert!(msg.contains("3 tab-separated fields"), "{msg}");
    }
}
