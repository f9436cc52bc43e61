//! An append-only vector stored in fixed-size chunks, so a consistent copy of millions of elements costs a few
//! pointer copies instead of a full copy.
//!
//! Why: a checkpoint must capture the state exactly at one log position, and the writer thread must not stall
//! while gigabytes are encoded (it did: 1.1 s at 12 M transfers). Full chunks never change once sealed, so
//! [`Chunks::freeze`] shares them (`Arc`) with the checkpoint thread and copies only the open chunk (at most
//! [`CHUNK_LEN`] elements). The rare pop of a sealed element (a linked chain rolled back right after a chunk was
//! sealed) reopens that chunk, copying it if a checkpoint still holds it.

use std::ops::Index;
use std::sync::Arc;

/// Elements per chunk: 64 Ki transfers are 8 MiB, so the open chunk a freeze copies takes about a millisecond.
pub const CHUNK_LEN: usize = 1 << 16;

/// The vector. Indexes are global (`0..len()`), as with a `Vec`.
#[derive(Debug, Clone, Default)]
pub struct Chunks<T> {
    /// Sealed chunks, each exactly [`CHUNK_LEN`] long; never mutated while shared.
    sealed: Vec<Arc<Vec<T>>>,
    /// The open chunk (shorter than [`CHUNK_LEN`] between calls).
    open: Vec<T>,
}

/// A consistent, immutable copy of a [`Chunks`] at the moment of [`Chunks::freeze`].
#[derive(Debug, Clone)]
pub struct Frozen<T> {
    sealed: Vec<Arc<Vec<T>>>,
    open: Vec<T>,
}

impl<T: Copy> Chunks<T> {
    /// An empty vector.
    pub fn new() -> Self {
        Chunks {
            sealed: Vec::new(),
            open: Vec::new(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.sealed.len() * CHUNK_LEN + self.open.len()
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, if `i < len()`.
    pub fn get(&self, i: usize) -> Option<&T> {
        let (c, k) = (i / CHUNK_LEN, i % CHUNK_LEN);
        match c.cmp(&self.sealed.len()) {
            std::cmp::Ordering::Less => Some(&self.sealed[c][k]),
            std::cmp::Ordering::Equal => self.open.get(k),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Appends an element, sealing the open chunk when it is full.
    pub fn push(&mut self, value: T) {
        if self.open.capacity() == 0 {
            self.open.reserve_exact(CHUNK_LEN);
        }
        self.open.push(value);
        if self.open.len() == CHUNK_LEN {
            let full = std::mem::take(&mut self.open);
            // Moves the buffer, no copy.
            self.sealed.push(Arc::new(full));
        }
        debug_assert!(self.open.len() < CHUNK_LEN);
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T> {
        if self.open.is_empty() {
            let last = self.sealed.pop()?;
            // Shared with a checkpoint still being written: copy it, the checkpoint keeps its own.
            self.open = Arc::unwrap_or_clone(last);
        }
        self.open.pop()
    }

    /// Every element in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.sealed
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
    }

    /// A consistent copy: sealed chunks are shared, the open one is copied.
    pub fn freeze(&self) -> Frozen<T> {
        Frozen {
            sealed: self.sealed.clone(),
            open: self.open.clone(),
        }
    }
}

impl<T: Copy> Index<usize> for Chunks<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        match self.get(i) {
            Some(v) => v,
            None => panic!("index {i} out of range for Chunks of length {}", self.len()),
        }
    }
}

impl<T> Frozen<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.sealed.len() * CHUNK_LEN + self.open.len()
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.sealed
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec_across_chunk_boundaries() {
        let mut c = Chunks::new();
        let mut v = Vec::new();
        let n = CHUNK_LEN * 2 + 17;
        for i in 0..n as u32 {
            c.push(i);
            v.push(i);
        }
        assert_eq!(c.len(), v.len());
        assert_eq!(c[CHUNK_LEN - 1], v[CHUNK_LEN - 1]);
        assert_eq!(c[CHUNK_LEN], v[CHUNK_LEN]);
        assert!(c.get(n).is_none());
        assert!(c.iter().copied().eq(v.iter().copied()));
        // Pop back across a sealed boundary, then push again.
        for _ in 0..40 {
            assert_eq!(c.pop(), v.pop());
        }
        assert_eq!(c.len(), v.len());
        c.push(7);
        v.push(7);
        assert!(c.iter().copied().eq(v.iter().copied()));
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_changes() {
        let mut c = Chunks::new();
        for i in 0..(CHUNK_LEN + 5) as u64 {
            c.push(i);
        }
        let frozen = c.freeze();
        // Pop into the shared sealed chunk (forces a copy), then append different values.
        for _ in 0..10 {
            c.pop();
        }
        for _ in 0..100 {
            c.push(u64::MAX);
        }
        assert_eq!(frozen.len(), CHUNK_LEN + 5);
        assert!(frozen.iter().copied().eq(0..(CHUNK_LEN + 5) as u64));
        assert_eq!(c.len(), CHUNK_LEN + 95);
        assert_eq!(c[CHUNK_LEN - 6], (CHUNK_LEN - 6) as u64);
        assert_eq!(c[CHUNK_LEN - 5], u64::MAX);
    }
}
