//! [`FileOffsetStore`]: offsets of every connector in one JSON file, replaced atomically on each
//! save (write a temp file beside it, fsync, rename over, fsync the directory).
//!
//! File format (version 1):
//! ```json
//! {"version": 1, "namespaces": {"telemetry": [{"partition": {...}, "offset": {...}}]}}
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::offset::{OffsetMap, OffsetStore};
use crate::record::{SourceOffset, SourcePartition};
use crate::{Error, Result};

const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    version: u32,
    namespaces: BTreeMap<String, Vec<Entry>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    partition: SourcePartition,
    offset: SourceOffset,
}

/// Offsets in a JSON file. Shared by every connector of a process (each in its own namespace);
/// saves are serialized and each replaces the file atomically, so a crash leaves either the old or
/// the new file, never a torn one.
///
/// ```no_run
/// use connector_core::{FileOffsetStore, OffsetStore};
///
/// # async fn example() -> connector_core::Result<()> {
/// let store = FileOffsetStore::open("connect-offsets.json").await?;
/// let offsets = store.load("telemetry").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileOffsetStore {
    path: Arc<PathBuf>,
    state: Mutex<Option<BTreeMap<String, OffsetMap>>>,
}

impl FileOffsetStore {
    /// A store at `path`; the file is read on first use.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: Arc::new(path.into()), state: Mutex::new(None) }
    }

    /// A store at `path`, read now so that a corrupt file stops the process at start.
    ///
    /// # Errors
    /// Fatal when the file exists but is not a complete offsets file.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let store = Self::new(path);
        store.load("").await?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read(path: Arc<PathBuf>) -> Result<BTreeMap<String, OffsetMap>> {
        let shown = path.display().to_string();
        let result = tokio::task::spawn_blocking(move || std::fs::read(&*path))
            .await
            .map_err(|e| Error::fatal(format!("reading offsets file {shown}")).with_source(e))?;
        let bytes = match result {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => {
                return Err(Error::fatal(format!("cannot read offsets file {shown}")).with_source(e))
            }
        };
        let contents: FileContents = serde_json::from_slice(&bytes).map_err(|e| {
            Error::fatal(format!(
                "offsets file {shown} is corrupt or incomplete ({e}); refusing to start from zero. \
                 Restore it, or delete it to re-read every source from the beginning"
            ))
        })?;
        if contents.version != FORMAT_VERSION {
            return Err(Error::fatal(format!(
                "offsets file {shown} has format version {}; this build reads version {FORMAT_VERSION}",
                contents.version
            )));
        }
        Ok(contents
            .namespaces
            .into_iter()
            .map(|(ns, entries)| {
                let mut m = OffsetMap::new();
                for e in entries {
                    m.insert(e.partition, e.offset);
                }
                (ns, m)
            })
            .collect())
    }

    fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "offsets".to_owned());
        let tmp = dir.join(format!(".{file_name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }
}

#[async_trait]
impl OffsetStore for FileOffsetStore {
    async fn load(&self, namespace: &str) -> Result<OffsetMap> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(Self::read(Arc::clone(&self.path)).await?);
        }
        Ok(state.as_ref().and_then(|s| s.get(namespace)).cloned().unwrap_or_default())
    }

    async fn save(&self, namespace: &str, offsets: &OffsetMap) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(Self::read(Arc::clone(&self.path)).await?);
        }
        // Build the new contents aside; memory is updated only once the file is durable.
        let mut next = state.clone().unwrap_or_default();
        next.entry(namespace.to_owned()).or_default().merge(offsets);
        let contents = FileContents {
            version: FORMAT_VERSION,
            namespaces: next
                .iter()
                .map(|(ns, m)| {
                    let entries = m
                        .iter()
                        .map(|(p, o)| Entry { partition: p.clone(), offset: o.clone() })
                        .collect();
                    (ns.clone(), entries)
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&contents)
            .map_err(|e| Error::fatal("cannot serialize offsets").with_source(e))?;
        let path = Arc::clone(&self.path);
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || Self::write_atomically(&path, &bytes))
            .await
            .map_err(|e| Error::fatal(format!("writing offsets file {shown}")).with_source(e))?
            .map_err(|e| {
                Error::retriable(format!("cannot write offsets file {shown}")).with_source(e)
            })?;
        *state = Some(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TopicPartition;
    use serde_json::json;

    fn part<T: From<serde_json::Map<String, serde_json::Value>>>(v: serde_json::Value) -> T {
        v.as_object().cloned().unwrap_or_default().into()
    }

    #[tokio::test]
    async fn offsets_survive_a_reopen_and_namespaces_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        let store = FileOffsetStore::open(&path).await.unwrap();
        let mut a = OffsetMap::new();
        a.insert(part(json!({"file": "x"})), part(json!({"position": 7})));
        store.save("a", &a).await.unwrap();
        let mut b = OffsetMap::new();
        b.insert_kafka(&TopicPartition::new("t", 2), 99);
        store.save("b", &b).await.unwrap();
        let mut a2 = OffsetMap::new();
        a2.insert(part(json!({"file": "y"})), part(json!({"position": 1})));
        store.save("a", &a2).await.unwrap();

        let reopened = FileOffsetStore::open(&path).await.unwrap();
        let a_loaded = reopened.load("a").await.unwrap();
        assert_eq!(a_loaded.len(), 2, "saves merge");
        assert_eq!(a_loaded.get(&part(json!({"file": "x"}))), Some(&part(json!({"position": 7}))));
        assert_eq!(
            reopened.load("b").await.unwrap().kafka_offset(&TopicPartition::new("t", 2)),
            Some(99)
        );
        assert!(reopened.load("c").await.unwrap().is_empty());
        assert!(!dir.path().join(".offsets.json.tmp").exists());
    }

    #[tokio::test]
    async fn a_truncated_file_is_an_error_naming_the_file_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        let store = FileOffsetStore::new(&path);
        let mut a = OffsetMap::new();
        a.insert(part(json!({"file": "x"})), part(json!({"position": 7})));
        store.save("a", &a).await.unwrap();
        let full = std::fs::read(&path).unwrap();
        for cut in [0, 1, full.len() / 2, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let err = FileOffsetStore::open(&path).await.unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("corrupt or incomplete"), "{msg}");
            assert_eq!(err.kind(), crate::ErrorKind::Fatal);
        }
    }

    #[tokio::test]
    async fn garbage_and_unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.json");
        std::fs::write(&path, b"{\"version\": 9, \"namespaces\": {}}").unwrap();
        let msg = FileOffsetStore::open(&path).await.unwrap_err().to_string();
        assert!(msg.contains("format version 9"), "{msg}");
        std::fs::write(&path, b"\x00\x01garbage").unwrap();
        assert!(FileOffsetStore::open(&path).await.is_err());
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_previous_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("o.json");
        let store = FileOffsetStore::new(&path);
        let mut a = OffsetMap::new();
        a.insert(part(json!({"f": 1})), part(json!({"p": 1})));
        store.save("a", &a).await.unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        let mut b = OffsetMap::new();
        b.insert(part(json!({"f": 1})), part(json!({"p": 2})));
        assert!(store.save("a", &b).await.is_err());
        assert_eq!(
            store.load("a").await.unwrap().get(&part(json!({"f": 1}))),
            Some(&part(json!({"p": 1})))
        );
    }
}
