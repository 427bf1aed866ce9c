//! The ordered key-value trees the Raft log, vote and snapshots are written to: sled in
//! production. The stores are written against [`KvTree`] rather than sled directly so the
//! deterministic simulation (`sim`) can run the very same store code over an in-memory
//! tree that models sled's crash semantics (what survives a crash is every write before
//! the last completed flush, plus some prefix of the writes after it).

use std::future::Future;
use std::ops::Bound;

/// One tree of an ordered key-value store. Writes become durable only once a later
/// [`KvTree::flush`] completes; a batch is applied atomically, before and after a crash.
pub trait KvTree: Clone + Send + Sync + 'static {
    type Value: AsRef<[u8]> + Send;
    type Error: std::error::Error + Send + Sync + 'static;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, Self::Error>;
    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), Self::Error>;
    /// The value under the greatest key.
    fn last(&self) -> Result<Option<Self::Value>, Self::Error>;
    /// Keys and values within `range`, in key order. Collected rather than streamed: every
    /// caller reads the whole range anyway (entries to replicate, keys to remove).
    fn range(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Vec<KvPair<Self>>, Self::Error>;
    /// Applies every write of `batch` (a value to insert, or `None` to remove) atomically.
    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), Self::Error>;
    /// Makes every write issued before the call durable, the writes of other trees of the
    /// same store included.
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A key and its value as a tree hands them out.
pub type KvPair<T> = (<T as KvTree>::Value, <T as KvTree>::Value);

impl KvTree for sled::Tree {
    type Value = sled::IVec;
    type Error = sled::Error;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        sled::Tree::get(self, key)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), sled::Error> {
        sled::Tree::insert(self, key, value).map(drop)
    }

    fn last(&self) -> Result<Option<sled::IVec>, sled::Error> {
        Ok(sled::Tree::last(self)?.map(|(_, value)| value))
    }

    fn range(
        &self,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, sled::Error> {
        sled::Tree::range::<&[u8], _>(self, range).collect()
    }

    fn apply_batch(&self, batch: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), sled::Error> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        sled::Tree::apply_batch(self, sled_batch)
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        self.flush_async().await.map(drop)
    }
}
