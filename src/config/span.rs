//! Mapping between field paths and places in the TOML source, so every
//! configuration error can name the line, the column and the field.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `policy[0].schedule.cron`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    /// `self` followed by every step of `rest`.
    pub fn join(&self, rest: &FieldPath) -> FieldPath {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// The parsed document with spans, for looking places up.
pub struct SourceMap<'a> {
    src: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
    /// Byte offset where each line starts, so a position costs a binary
    /// search and one line, not a scan of the file: thousands of errors in
    /// a large file stay linear.
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub fn new(src: &'a str) -> SourceMap<'a> {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceMap {
            src,
            root: DeTable::parse(src).ok(),
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line starting at or before `offset`.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let col = self.src[start..offset].chars().count() + 1;
        (line, col)
    }

    /// The span of the value at `path`, or of its nearest existing parent.
    pub fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        // Point at the key for scalars (where the user looks), at the
        // value for tables and arrays.
        Some(match self.walk(path).pop() {
            None => root.span(),
            Some((v, key_span)) => match v.get_ref() {
                DeValue::Table(_) | DeValue::Array(_) => v.span(),
                _ => key_span,
            },
        })
    }

    /// The value at `path`, if there is one.
    pub fn value(&self, path: &FieldPath) -> Option<&Spanned<DeValue<'a>>> {
        let steps = self.walk(path);
        if steps.len() < path.0.len() {
            return None;
        }
        steps.last().map(|(v, _)| *v)
    }

    /// The values along `path`, each with the span of the key (or array
    /// element) that leads to it, as far as the document has them.
    fn walk(&self, path: &FieldPath) -> Vec<(&Spanned<DeValue<'a>>, Range<usize>)> {
        let mut steps = Vec::new();
        let Some(root) = self.root.as_ref() else {
            return steps;
        };
        let mut table: Option<&DeTable<'a>> = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'a>>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value.map(Spanned::get_ref)) {
                (Seg::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k)
                    .map(|(key, v)| (v, key.span())),
                (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i).map(|v| (v, v.span())),
                _ => None,
            };
            let Some((v, key_span)) = next else { break };
            steps.push((v, key_span));
            value = Some(v);
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        steps
    }

    /// The deepest field whose text contains `span`, for errors that come
    /// with a place but no field name (serde's).
    ///
    /// A value's own span is not enough to search by: a `[table]` or
    /// `[[array]]` value spans only its header, and an implicit parent table
    /// (`stores` in `[stores.local]`) only its key. So each field is judged
    /// by its extent, the range covering its key, its value and everything
    /// inside it; where extents of siblings overlap (a table whose
    /// sub-tables are defined further down the file), the smallest one that
    /// contains `span` wins.
    pub fn path_at(&self, span: &Range<usize>) -> FieldPath {
        let mut path = FieldPath::default();
        let Some(root) = self.root.as_ref() else {
            return path;
        };
        let contains =
            |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        loop {
            let candidates: Vec<(Seg, &Spanned<DeValue<'_>>, Range<usize>)> = match (table, array) {
                (Some(t), _) => t
                    .iter()
                    .map(|(k, v)| {
                        let e = extent(v);
                        let e = e.start.min(k.span().start)..e.end.max(k.span().end);
                        (Seg::Key(k.get_ref().to_string()), v, e)
                    })
                    .collect(),
                (None, Some(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (Seg::Index(i), v, extent(v)))
                    .collect(),
                (None, None) => Vec::new(),
            };
            let Some((seg, v, _)) = candidates
                .into_iter()
                .filter(|(_, _, e)| contains(e))
                .min_by_key(|(_, _, e)| e.len())
            else {
                break;
            };
            path.0.push(seg);
            (table, array) = match v.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        path
    }

    /// Whether the value at `path` is a table holding `key`; in that case
    /// the path of that key and its span. Serde reports an unknown field at
    /// the enclosing table; this finds the key itself.
    pub fn find_key(&self, path: &FieldPath, key: &str) -> Option<(FieldPath, Range<usize>)> {
        let root = self.root.as_ref()?;
        // A clone of the root keeps the borrows simple; this runs once, on
        // an error, and configs are small.
        let root_value = DeValue::Table(root.get_ref().clone());
        let mut value: &DeValue<'_> = &root_value;
        for seg in &path.0 {
            value = match (seg, value) {
                (Seg::Key(k), DeValue::Table(t)) => t
                    .iter()
                    .find(|(name, _)| name.get_ref().as_ref() == k)
                    .map(|(_, v)| v.get_ref())?,
                (Seg::Index(i), DeValue::Array(a)) => a.get(*i).map(Spanned::get_ref)?,
                _ => return None,
            };
        }
        match value {
            DeValue::Table(t) => t
                .iter()
                .find(|(name, _)| name.get_ref().as_ref() == key)
                .map(|(name, _)| (path.key(key), name.span())),
            _ => None,
        }
    }
}

/// The range covering a value and everything inside it, keys included.
fn extent(v: &Spanned<DeValue<'_>>) -> Range<usize> {
    let mut r = v.span();
    let mut widen = |o: Range<usize>| {
        r.start = r.start.min(o.start);
        r.end = r.end.max(o.end);
    };
    match v.get_ref() {
        DeValue::Table(t) => {
            for (k, child) in t.iter() {
                widen(k.span());
                widen(extent(child));
            }
        }
        DeValue::Array(a) => {
            for child in a.iter() {
                widen(extent(child));
            }
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::SourceMap;

    #[test]
    fn line_and_column_count_characters_from_the_line_start() {
        let src = "a = 1\n[t]\nnom = \"café\"\nx = 2";
        let m = SourceMap::new(src);
        assert_eq!(m.line_col(0), (1, 1));
        assert_eq!(m.line_col(src.find("[t]").unwrap()), (2, 1));
        assert_eq!(m.line_col(src.find("nom").unwrap()), (3, 1));
        // After the two-byte `é`, columns are characters, not bytes.
        assert_eq!(m.line_col(src.find("\"\nx").unwrap()), (3, 12));
        assert_eq!(m.line_col(src.find("x = 2").unwrap()), (4, 1));
        // Past the end, and inside a multi-byte character: clamped.
        assert_eq!(m.line_col(src.len() + 10), (4, 6));
        assert_eq!(m.line_col(src.find('é').unwrap() + 1), (3, 11));
    }
}
