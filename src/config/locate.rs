//! Where each key and value sits in the YAML text, by dotted path (`services[1].name`).
//!
//! serde keeps no positions once a value is deserialized, so checks made after parsing ask this
//! index instead. It is built from yaml-rust2's marked events over the same text serde_yaml_ng
//! parsed. Paths use serde_yaml_ng's spelling (`a.b[0].c`, 0-based indexes) so both sources of
//! errors name keys alike. Knows nothing of the config's schema.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column; `0:0` means "no position" (built-in defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy)]
struct Spot {
    /// The key's scalar, for map entries.
    key: Option<Pos>,
    /// The value's first character (for a block collection, its first entry).
    value: Pos,
    value_index: usize,
}

/// Positions of every key and value of the first YAML document.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    spots: HashMap<String, Spot>,
}

impl Locator {
    /// Indexes `text`. A syntax error stops indexing where it occurs; what came before stays
    /// usable (serde_yaml_ng reports the error itself).
    pub(crate) fn new(text: &str) -> Locator {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Ignoring the error is deliberate: see above.
        let _ = parser.load(&mut builder, false);
        Locator {
            spots: builder.spots,
        }
    }

    /// Where the value at `path` starts; falls back to the closest located ancestor.
    pub(crate) fn value(&self, path: &str) -> Pos {
        self.find(path).map(|s| s.value).unwrap_or_default()
    }

    /// Where the key of `path` is written; falls back to its value, then to ancestors.
    pub(crate) fn key(&self, path: &str) -> Pos {
        self.find(path)
            .map(|s| s.key.unwrap_or(s.value))
            .unwrap_or_default()
    }

    /// Whether `path` is written in the file at all.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.spots.contains_key(path)
    }

    /// Paths whose key (`true`) or value (`false`) starts at `pos`.
    pub(crate) fn paths_at(&self, pos: Pos) -> Vec<(&str, bool)> {
        let mut found: Vec<(&str, bool)> = self
            .spots
            .iter()
            .flat_map(|(path, spot)| {
                let key = (spot.key == Some(pos)).then_some((path.as_str(), true));
                let value = (spot.value == pos).then_some((path.as_str(), false));
                key.into_iter().chain(value)
            })
            .collect();
        // Deepest first: a block map and its first key share a position.
        found.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        found
    }

    fn find(&self, path: &str) -> Option<&Spot> {
        let mut path = path;
        loop {
            if let Some(spot) = self.spots.get(path) {
                return Some(spot);
            }
            path = parent(path)?;
        }
    }
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a` → `` (the root), `` → none.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// `parent` + `key` in serde_yaml_ng's spelling.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn pos(mark: Marker) -> Pos {
    // yaml-rust2 columns are 0-based in practice; serde_yaml_ng (libyaml) prints 1-based ones.
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

enum Frame {
    Map {
        path: String,
        /// The key just read, waiting for its value.
        key: Option<String>,
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
        first: bool,
    },
    /// A collection used as a mapping key: nothing inside is addressable.
    Opaque,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    spots: HashMap<String, Spot>,
    done: bool,
}

impl Builder {
    /// Where the next node goes: `Some(path)` for a value, `None` inside an opaque key. A map
    /// expecting a key records the key and returns `Err(())`.
    fn place(&mut self, mark: Marker, scalar: Option<&str>) -> Result<Option<String>, ()> {
        let index = mark.index();
        let (path, parent_path, first) = match self.stack.last_mut() {
            None => return Ok(Some(String::new())),
            Some(Frame::Opaque) => return Ok(None),
            Some(Frame::Seq { path, next, first }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                (Some(child), path.clone(), std::mem::replace(first, false))
            }
            Some(Frame::Map { path, key, first }) => match key.take() {
                Some(k) => (Some(join(path, &k)), path.clone(), false),
                None => {
                    let name = scalar.unwrap_or("?").to_owned();
                    let child = join(path, &name);
                    let parent_path = path.clone();
                    let was_first = std::mem::replace(first, false);
                    *key = Some(name);
                    self.spots.insert(
                        child,
                        Spot {
                            key: Some(pos(mark)),
                            value: pos(mark),
                            value_index: index,
                        },
                    );
                    self.refine(&parent_path, was_first, mark);
                    return Err(());
                }
            },
        };
        self.refine(&parent_path, first, mark);
        Ok(path)
    }

    /// A block collection's start mark lands after its first key; its first entry is where a
    /// reader looks, so the earlier of the two wins.
    fn refine(&mut self, path: &str, first: bool, mark: Marker) {
        if !first {
            return;
        }
        if let Some(spot) = self.spots.get_mut(path) {
            if mark.index() < spot.value_index {
                spot.value = pos(mark);
                spot.value_index = mark.index();
            }
        }
    }

    fn record_value(&mut self, path: String, mark: Marker) {
        let spot = self.spots.entry(path).or_insert(Spot {
            key: None,
            value: pos(mark),
            value_index: mark.index(),
        });
        spot.value = pos(mark);
        spot.value_index = mark.index();
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.done {
            return;
        }
        match event {
            Event::DocumentEnd => self.done = true,
            Event::Scalar(value, ..) => {
                if let Ok(Some(path)) = self.place(mark, Some(&value)) {
                    self.record_value(path, mark);
                }
            }
            Event::Alias(_) => {
                if let Ok(Some(path)) = self.place(mark, None) {
                    self.record_value(path, mark);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                let frame = match self.place(mark, None) {
                    Ok(Some(path)) => {
                        self.record_value(path.clone(), mark);
                        if is_map {
                            Frame::Map {
                                path,
                                key: None,
                                first: true,
                            }
                        } else {
                            Frame::Seq {
                                path,
                                next: 0,
                                first: true,
                            }
                        }
                    }
                    Ok(None) | Err(()) => Frame::Opaque,
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
postgres:
  port: 5432
  parameters: {a: 1, b: on}
services:
  - name: a
    command: [x, 'y']
  -   name: b
      after:
        - a
";

    fn p(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn locates_keys_and_values() {
        let l = Locator::new(DOC);
        assert_eq!(l.key("postgres.port"), p(2, 3));
        assert_eq!(l.value("postgres.port"), p(2, 9));
        assert_eq!(l.value("postgres.parameters"), p(3, 15));
        assert_eq!(l.value("postgres.parameters.b"), p(3, 25));
        assert_eq!(l.value("services[0]"), p(5, 5));
        assert_eq!(l.value("services[0].command[1]"), p(6, 18));
        assert_eq!(l.key("services[1].name"), p(7, 7));
        assert_eq!(l.value("services[1].after[0]"), p(9, 11));
        assert_eq!(l.value("postgres"), p(2, 3));
        // Not written: the closest ancestor.
        assert_eq!(l.value("services[1].stop_timeout"), p(7, 7));
        assert!(!l.contains("services[1].stop_timeout"));
        assert_eq!(Locator::new("").value("postgres.port"), p(0, 0));
    }

    #[test]
    fn finds_paths_by_position() {
        let l = Locator::new(DOC);
        assert_eq!(
            l.paths_at(p(2, 3)),
            vec![("postgres.port", true), ("postgres", false)]
        );
        assert_eq!(l.paths_at(p(2, 9)), vec![("postgres.port", false)]);
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a.b");
    }
}
