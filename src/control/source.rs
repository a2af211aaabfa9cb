//! Integration sources: where the worker's integrations come from.
//!
//! In: a JSON file (one integration object, or an array of them) or a
//! directory of such files. Out: a built [`Index`], or every refused record
//! with its file and the field at fault. A source that fails to load leaves
//! the running index untouched.
//!
//! A [`FileSource`] remembers what it compiled: a reload compiles only the
//! records whose text changed, and shares the others with the running index.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::model::integration::{Integration, InvalidIntegration};
use crate::pipeline::resolve::{DuplicateId, Index};
use crate::template::{TemplateCache, TemplateLimits};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not JSON: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: integration {position}: {error}")]
    Invalid {
        path: PathBuf,
        position: String,
        error: InvalidIntegration,
    },
    #[error("{0}")]
    Duplicate(#[from] DuplicateId),
}

/// The integrations of a file or directory, compiled at most once per
/// distinct record text.
#[derive(Default)]
pub struct FileSource {
    /// The last successful load's integrations, by the XXH3-128 of their
    /// record's text.
    compiled: HashMap<u128, Arc<Integration>>,
    /// How many records the last load compiled (the rest were reused).
    pub last_compiled: usize,
    /// What the records' templates are compiled under.
    pub limits: TemplateLimits,
    /// Templates compiled once for every record that repeats them.
    templates: TemplateCache,
}

impl FileSource {
    /// A source whose records compile under `limits`.
    pub fn with_limits(limits: TemplateLimits) -> FileSource {
        FileSource {
            limits,
            ..FileSource::default()
        }
    }

    /// Loads `path` into an index. A record whose text is the same as at the
    /// last successful load keeps its compiled integration; the others are
    /// compiled. A load that fails changes nothing.
    pub fn load(&mut self, path: &Path) -> Result<Index, SourceError> {
        if path.as_os_str().is_empty() {
            self.compiled.clear();
            return Ok(Index::default());
        }
        let mut next = HashMap::with_capacity(self.compiled.len());
        let mut fresh = 0;
        let integrations = load_records(path, |text| {
            let key = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
            let integration = match self.compiled.get(&key) {
                Some(same) => same.clone(),
                None => {
                    fresh += 1;
                    Arc::new(Integration::from_json_in(
                        text.as_bytes(),
                        &self.limits,
                        Some(&self.templates),
                    )?)
                }
            };
            next.insert(key, integration.clone());
            Ok(integration)
        })?;
        let index = Index::from_shared(integrations)?;
        self.compiled = next;
        self.last_compiled = fresh;
        Ok(index)
    }
}

/// Every record under `path` (a file or a directory of `*.json`), each made
/// by `make` from its JSON text.
fn load_records<T>(
    path: &Path,
    mut make: impl FnMut(&str) -> Result<T, InvalidIntegration>,
) -> Result<Vec<T>, SourceError> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|error| SourceError::Io {
                path: path.to_owned(),
                error,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read(&file).map_err(|error| SourceError::Io {
            path: file.clone(),
            error,
        })?;
        // Each record is decoded from its own text, without a JSON value
        // of the whole file in between (100k records: a third of a reload).
        let json_error = |error| SourceError::Json {
            path: file.clone(),
            error,
        };
        let records: Vec<&RawValue> = if text.trim_ascii_start().starts_with(b"[") {
            serde_json::from_slice(&text).map_err(json_error)?
        } else {
            vec![serde_json::from_slice(&text).map_err(json_error)?]
        };
        out.reserve(records.len());
        for (i, record) in records.into_iter().enumerate() {
            let integration = make(record.get()).map_err(|error| SourceError::Invalid {
                path: file.clone(),
                position: position(record, i),
                error,
            })?;
            out.push(integration);
        }
    }
    Ok(out)
}

/// How an error names a record: its id, or its place in the file.
fn position(record: &RawValue, i: usize) -> String {
    serde_json::from_str::<Value>(record.get())
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(|id| format!("{id:?}")))
        .unwrap_or_else(|| format!("#{i}"))
}

/// Loads `path` into an index; an empty path is an empty index.
pub fn load_index(path: &Path) -> Result<Index, SourceError> {
    FileSource::default().load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_directory_and_names_the_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"id":"a","product_id":1,"event":"t","url":"http://h/"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            r#"[{"id":"b","owner":"u","event":"t","url":"http://h/"}]"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(load_index(dir.path()).unwrap().len(), 2);

        std::fs::write(
            dir.path().join("c.json"),
            r#"[{"id":"c","product_id":1,"event":"t","url":"http://h/","form":{},"json":{}}]"#,
        )
        .unwrap();
        let err = load_index(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("c.json: integration \"c\": json/form: json and form are mutually exclusive; give only one body"), "{err}");
    }

    #[test]
    fn a_reload_compiles_only_the_records_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("i.json");
        let record = |id: &str, event: &str| {
            format!(r#"{{"id":"{id}","product_id":1,"event":"{event}","url":"http://h/"}}"#)
        };
        let write =
            |records: &[String]| std::fs::write(&file, format!("[{}]", records.join(","))).unwrap();
        let mut source = FileSource::default();
        write(&[record("a", "t"), record("b", "t"), record("c", "t")]);
        let first = source.load(&file).unwrap();
        assert_eq!(source.last_compiled, 3);

        write(&[record("a", "t"), record("b", "edited"), record("d", "t")]);
        let second = source.load(&file).unwrap();
        assert_eq!(source.last_compiled, 2, "b edited, d new");
        assert!(
            Arc::ptr_eq(first.get("a").unwrap(), second.get("a").unwrap()),
            "a shared"
        );
        assert_eq!(second.get("b").unwrap().trigger.as_str(), "edited");
        assert!(second.get("c").is_none(), "c removed");

        // A refused file changes nothing: the next load reuses as before.
        std::fs::write(&file, "[{").unwrap();
        assert!(source.load(&file).is_err());
        write(&[record("a", "t"), record("b", "edited"), record("d", "t")]);
        let third = source.load(&file).unwrap();
        assert_eq!(source.last_compiled, 0);
        assert!(Arc::ptr_eq(
            second.get("d").unwrap(),
            third.get("d").unwrap()
        ));

        // A record removed and brought back is compiled again.
        write(&[record("a", "t")]);
        source.load(&file).unwrap();
        write(&[record("a", "t"), record("c", "t")]);
        source.load(&file).unwrap();
        assert_eq!(source.last_compiled, 1);
    }

    #[test]
    fn duplicate_ids_across_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.json", "b.json"] {
            std::fs::write(
                dir.path().join(f),
                r#"{"id":"same","product_id":1,"event":"t","url":"http://h/"}"#,
            )
            .unwrap();
        }
        assert_eq!(
            load_index(dir.path()).unwrap_err().to_string(),
            "integration id \"same\" is defined twice"
        );
    }
}
