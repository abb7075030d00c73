//! [`MemoryOffsetStore`]: offsets kept in memory, for tests and for connectors whose resume point
//! lives elsewhere (an MQTT persistent session).

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::offset::{OffsetMap, OffsetStore};
use crate::Result;

/// Offsets in memory; lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    namespaces: Mutex<HashMap<String, OffsetMap>>,
}

impl MemoryOffsetStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OffsetStore for MemoryOffsetStore {
    async fn load(&self, namespace: &str) -> Result<OffsetMap> {
        Ok(self.namespaces.lock().get(namespace).cloned().unwrap_or_default())
    }

    async fn save(&self, namespace: &str, offsets: &OffsetMap) -> Result<()> {
        self.namespaces.lock().entry(namespace.to_owned()).or_default().merge(offsets);
        Ok(())
    }
}
