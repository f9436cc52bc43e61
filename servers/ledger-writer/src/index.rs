//! The transfer id index (client-chosen 128-bit id → position in the state's transfer vector), built for tens of
//! millions of ids on the writer thread.
//!
//! Why not one `HashMap<u128, u32>`:
//! - **Cache misses.** At tens of millions of ids every lookup of a fresh id lands on a random cache line. A
//!   hashbrown table keeps its tags and its entries apart, so checking that a new id is absent and then inserting it
//!   cost two misses; perf put 26-32 % of the server's samples in those two calls at batch 1,000. Here a [`Slot`]
//!   holds the id itself and is probed linearly, so the check and the insert touch one line, and
//!   [`IdIndex::prefetch`] lets a batch ask for the lines of the next ids while it works on the current one.
//! - **Resize stalls.** A single table doubles by rehashing every id while the writer waits: at 14.7 M transfers that
//!   stalled every client for about two seconds (seen as 0 transfers/s in two consecutive seconds of a batch-1000
//!   run). Here the ids are spread over [`SHARDS`] tables by bits of their hash that the tables themselves do not
//!   use, so a resize rehashes 1/256 of the ids (about 10 ms at 15 M). Sharding alone would not spread resizes in
//!   time: a good hash fills every shard alike, so all 256 would cross their threshold within a few hundred
//!   thousand inserts of each other. So shard `i` grows early, at a load of `1/2 + 1/4 * i / SHARDS`
//!   ([`Table::grows_at`]), which staggers the 256 resizes over each 1.5x growth of the index.
//! - **TLB misses.** The tables' memory asks for transparent huge pages ([`HugePages`]): with 4 KiB pages nearly
//!   every random access to a table of hundreds of megabytes also walks the page table.
//!
//! The price is memory: with the early growth, slots average about 45 % full, about 70 bytes per id against about
//! 52 for a `HashMap<u128, u32>` (32-byte entries plus a tag byte, about 63 % full on average).
//!
//! Ids are hashed with a per-process seed (foldhash's `RandomState`), so clients cannot aim for collisions.

use std::alloc::Layout;
use std::hash::BuildHasher;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};
use allocator_api2::boxed::Box as ABox;
use foldhash::fast::RandomState;

/// Tables the ids are spread over (a power of two).
pub const SHARDS: usize = 256;

/// Where the shard number is taken from in the 64-bit hash. A table uses the low bits for the first slot it probes
/// (at most 32 of them: no table holds more than `u32::MAX` slots), so bits 40..48 are free.
const SHARD_SHIFT: u32 = 40;

/// Slots of a table when its first id arrives.
const FIRST_SLOTS: usize = 64;

/// Below this many slots tables grow at the full load (their resizes take microseconds).
const STAGGER_MIN_SLOTS: usize = 4096;

/// One index entry: the id in two halves and its position plus one (0 marks an empty slot, so fresh zeroed memory
/// is an empty table). 32 bytes, aligned to 32, so two fit a cache line and none straddles two.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    id_lo: u64,
    id_hi: u64,
    pos_plus_one: u32,
}

impl Slot {
    fn id(&self) -> u128 {
        u128::from(self.id_hi) << 64 | u128::from(self.id_lo)
    }

    fn is(&self, id: u128) -> bool {
        self.id_lo == id as u64 && self.id_hi == (id >> 64) as u64
    }
}

/// One shard: open addressing with linear probing over a power-of-two number of slots.
struct Table {
    /// Empty (no allocation) until the first id arrives.
    slots: ABox<[Slot], HugePages>,
    len: usize,
}

impl Table {
    fn new() -> Table {
        Table {
            slots: zeroed_slots(0),
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot holding `id`, or the empty slot where it would go. The table must not be full.
    fn probe(&self, hash: u64, id: u128) -> (usize, bool) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.pos_plus_one == 0 {
                return (i, false);
            }
            if s.is(id) {
                return (i, true);
            }
            i = (i + 1) & mask;
        }
    }

    /// The length at which shard `shard` grows (see the module docs): at most 3/4 full.
    fn grows_at(shard: usize, slots: usize) -> usize {
        if slots < STAGGER_MIN_SLOTS {
            return slots / 4 * 3;
        }
        slots / 2 + slots / 4 * shard / SHARDS
    }

    /// Doubles the table (or allocates the first one), moving every id.
    fn grow(&mut self, hasher: &RandomState) {
        let slots = (self.slots.len() * 2).max(FIRST_SLOTS);
        assert!(slots <= 1 << 32, "id index shard over 2^32 slots");
        let mut fresh = zeroed_slots(slots);
        let mask = slots - 1;
        for s in self.slots.iter().filter(|s| s.pos_plus_one != 0) {
            let mut i = hasher.hash_one(s.id()) as usize & mask;
            while fresh[i].pos_plus_one != 0 {
                i = (i + 1) & mask;
            }
            fresh[i] = *s;
        }
        self.slots = fresh;
    }

    /// Removes the id in slot `i` and closes the gap (backward-shift deletion), so probes stay correct without
    /// tombstones.
    fn remove_at(&mut self, mut i: usize, hasher: &RandomState) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.pos_plus_one == 0 {
                break;
            }
            let home = hasher.hash_one(s.id()) as usize & mask;
            // `s` may move back to `i` only if its home is not in the cyclic range (i, j].
            let home_in_gap = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !home_in_gap {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = Slot::default();
        self.len -= 1;
    }
}

/// `n` empty slots. Zeroed memory is empty slots, and large zeroed blocks come from the allocator as fresh pages
/// that cost nothing until an id lands on them.
fn zeroed_slots(n: usize) -> ABox<[Slot], HugePages> {
    // SAFETY: `Slot` is plain integers, for which all-zero bytes are a valid value.
    unsafe { ABox::new_zeroed_slice_in(n, HugePages).assume_init() }
}

/// Id → position, sharded (see the module docs).
pub struct IdIndex {
    hasher: RandomState,
    shards: Box<[Table]>,
    len: usize,
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex::new()
    }
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex").field("len", &self.len).finish()
    }
}

impl IdIndex {
    /// An empty index (allocates nothing until ids arrive).
    pub fn new() -> IdIndex {
        IdIndex {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Table::new()).collect(),
            len: 0,
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash(&self, id: u128) -> u64 {
        self.hasher.hash_one(id)
    }

    fn shard(hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
    }

    /// The position stored for `id`.
    pub fn get(&self, id: u128) -> Option<u32> {
        let h = self.hash(id);
        let t = &self.shards[Self::shard(h)];
        if t.len == 0 {
            return None;
        }
        match t.probe(h, id) {
            (i, true) => Some(t.slots[i].pos_plus_one - 1),
            (_, false) => None,
        }
    }

    /// Asks the CPU to start loading the line where `id` would be, so a lookup a little later does not wait for
    /// memory. Harmless for any id.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        let h = self.hash(id);
        let t = &self.shards[Self::shard(h)];
        if let Some(s) = t.slots.get(h as usize & t.mask()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: prefetching is a hint; the address is a valid slot.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>((s as *const Slot).cast());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = s;
        }
    }

    /// Stores `id → index`; returns the position it replaced, if the id was there.
    pub fn insert(&mut self, id: u128, index: u32) -> Option<u32> {
        assert!(index < u32::MAX, "positions are below u32::MAX");
        let h = self.hash(id);
        let shard = Self::shard(h);
        let t = &mut self.shards[shard];
        if t.len >= Table::grows_at(shard, t.slots.len()) {
            t.grow(&self.hasher);
        }
        let (i, found) = t.probe(h, id);
        let slot = &mut t.slots[i];
        let old = found.then(|| slot.pos_plus_one - 1);
        *slot = Slot {
            id_lo: id as u64,
            id_hi: (id >> 64) as u64,
            pos_plus_one: index + 1,
        };
        if !found {
            t.len += 1;
            self.len += 1;
        }
        old
    }

    /// Removes `id`; returns its position if it was there.
    pub fn remove(&mut self, id: u128) -> Option<u32> {
        let h = self.hash(id);
        let t = &mut self.shards[Self::shard(h)];
        if t.len == 0 {
            return None;
        }
        let (i, found) = t.probe(h, id);
        if !found {
            return None;
        }
        let pos = t.slots[i].pos_plus_one - 1;
        t.remove_at(i, &self.hasher);
        self.len -= 1;
        Some(pos)
    }

    /// Makes room for `additional` more ids, spread evenly (restore knows the count up front).
    pub fn reserve(&mut self, additional: usize) {
        // A hash spreads ids binomially over the shards: ~1 % above the mean plus a constant covers all but rare
        // outliers, which then pay one ordinary resize.
        let per_shard = additional / SHARDS + additional / SHARDS / 100 + 64;
        for (shard, t) in self.shards.iter_mut().enumerate() {
            while Table::grows_at(shard, t.slots.len()) < t.len + per_shard {
                t.grow(&self.hasher);
            }
        }
    }
}

/// Allocations at least this large ask for huge pages (smaller ones would not hold one aligned huge page anyway).
const HUGE_MIN_BYTES: usize = 4 << 20;
/// x86-64's transparent huge page size.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// The global allocator, plus `madvise(MADV_HUGEPAGE)` on large blocks, for hosts whose transparent huge pages are
/// set to `madvise` (the common default): a 2 MiB page covers what 512 TLB entries would. Advice only: where huge
/// pages are off or unavailable the memory is ordinary.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePages;

// SAFETY: every block comes from, and goes back to, `Global` with the same layout; `madvise` changes no contents.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Global.allocate(layout)?;
        advise_huge(block.as_ptr() as *mut u8 as usize, layout.size());
        Ok(block)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // `Global` gets zeroed memory from calloc, which for large blocks maps fresh pages instead of writing zeros.
        let block = Global.allocate_zeroed(layout)?;
        advise_huge(block.as_ptr() as *mut u8 as usize, layout.size());
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `ptr` was allocated by `Global` with `layout` (see `allocate`).
        unsafe { Global.deallocate(ptr, layout) }
    }
}

/// Advises huge pages for the 2 MiB-aligned part of `[addr, addr + len)`, for blocks of at least
/// [`HUGE_MIN_BYTES`].
fn advise_huge(addr: usize, len: usize) {
    if len < HUGE_MIN_BYTES {
        return;
    }
    let start = addr.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (addr + len) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if end > start {
        // SAFETY: the range lies inside a block this process just allocated; MADV_HUGEPAGE is advice and changes
        // no contents. A failure (huge pages disabled) leaves ordinary pages, which is fine.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_replace_remove() {
        let mut ix = IdIndex::new();
        assert!(ix.is_empty());
        assert_eq!(ix.get(7), None);
        assert_eq!(ix.insert(7, 1), None);
        assert_eq!(ix.insert(u128::MAX, 2), None);
        assert_eq!(ix.get(7), Some(1));
        assert_eq!(ix.get(u128::MAX), Some(2));
        assert_eq!(
            ix.insert(7, 3),
            Some(1),
            "replacing returns the old position"
        );
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.remove(7), Some(3));
        assert_eq!(ix.remove(7), None);
        assert_eq!(ix.get(7), None);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn many_ids_survive_resizes_and_spread_over_every_shard() {
        let mut ix = IdIndex::new();
        let n: u32 = 200_000;
        // Sequential ids with the high half set, as a client with a time-based prefix sends them.
        let id = |k: u32| (0xABCD_u128 << 64) | u128::from(k);
        for k in 0..n {
            assert_eq!(ix.insert(id(k), k), None);
        }
        assert_eq!(ix.len(), n as usize);
        for k in (0..n).step_by(7) {
            assert_eq!(ix.get(id(k)), Some(k));
        }
        assert_eq!(ix.get(id(n)), None);
        let mean = n as usize / SHARDS;
        for (i, s) in ix.shards.iter().enumerate() {
            assert!(
                s.len > mean / 2 && s.len < mean * 2,
                "shard {i} holds {} ids, mean {mean}",
                s.len
            );
        }
        // Within a shard the probe start bits must still vary, or probing degrades.
        let starts: std::collections::HashSet<u64> = (0..n)
            .map(|k| ix.hash(id(k)))
            .filter(|&h| IdIndex::shard(h) == 0)
            .map(|h| h & 0xFFFF)
            .collect();
        assert!(
            starts.len() * 10 > mean * 9,
            "only {} distinct probe starts among ~{mean} ids of shard 0",
            starts.len()
        );
    }

    /// Shards must not all resize at once: while the index grows 4x, no window of 1/192 of those inserts may hold
    /// more than 5 % of the resizes. Without the stagger, 144 of 512 resizes fell within one window.
    #[test]
    fn shard_resizes_are_spread_out() {
        let mut ix = IdIndex::new();
        let (from, to) = (
            4 * SHARDS * STAGGER_MIN_SLOTS,
            16 * SHARDS * STAGGER_MIN_SLOTS,
        );
        let mut caps: Vec<usize> = Vec::new();
        let windows = 192;
        let window = (to - from) / windows;
        let mut per_window = vec![0usize; windows];
        for k in 0..to {
            ix.insert(k as u128, k as u32);
            if k + 1 == from {
                caps = ix.shards.iter().map(|s| s.slots.len()).collect();
            }
            if k >= from && (k - from) % 256 == 255 {
                for (c, s) in caps.iter_mut().zip(ix.shards.iter()) {
                    if s.slots.len() != *c {
                        *c = s.slots.len();
                        per_window[((k - from) / window).min(windows - 1)] += 1;
                    }
                }
            }
        }
        let total: usize = per_window.iter().sum();
        assert!(
            total >= SHARDS,
            "every shard doubled at least once, saw {total} resizes"
        );
        let worst = per_window.iter().max().copied().unwrap_or(0);
        assert!(
            worst * 20 <= total,
            "{worst} of {total} resizes fell within {window} inserts"
        );
    }

    /// Inserts, replacements and removals against a `HashMap` model, with few shards' worth of ids per table so
    /// probes collide, wrap around the end of a table, and removals shift displaced ids back.
    #[test]
    fn matches_a_hash_map_under_inserts_and_removals() {
        let mut ix = IdIndex::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..400_000u32 {
            // A small id space, so replacements and removals of present ids are common.
            let id = u128::from(next() % 60_000) << 64 | 5;
            if next() % 3 == 0 {
                assert_eq!(ix.remove(id), model.remove(&id), "remove at step {step}");
            } else {
                assert_eq!(
                    ix.insert(id, step),
                    model.insert(id, step),
                    "insert at step {step}"
                );
            }
            if step % 50_000 == 0 {
                assert!(model.iter().all(|(&id, &p)| ix.get(id) == Some(p)));
            }
        }
        assert_eq!(ix.len(), model.len());
        assert!(model.iter().all(|(&id, &p)| ix.get(id) == Some(p)));
        for id in model.keys().copied().collect::<Vec<_>>() {
            assert_eq!(ix.remove(id), model.remove(&id));
            assert_eq!(ix.get(id), None);
        }
        assert!(ix.is_empty());
        ix.prefetch(1);
    }

    #[test]
    fn reserve_then_fill_keeps_everything() {
        let mut ix = IdIndex::new();
        ix.reserve(100_000);
        for k in 0..100_000u32 {
            ix.insert(u128::from(k) << 70, k);
        }
        assert_eq!(ix.len(), 100_000);
        assert!((0..100_000u32).all(|k| ix.get(u128::from(k) << 70) == Some(k)));
    }

    #[test]
    fn huge_allocations_are_usable_and_freed() {
        // 8 MiB through the allocator: the advised range is written and read back.
        let layout = Layout::from_size_align(8 << 20, 64).unwrap();
        let block = HugePages.allocate(layout).unwrap();
        let p = block.as_ptr() as *mut u8;
        // SAFETY: `p` points to 8 MiB just allocated with `layout`.
        unsafe {
            p.write_bytes(0x5A, layout.size());
            assert_eq!(*p.add(layout.size() - 1), 0x5A);
            HugePages.deallocate(NonNull::new(p).unwrap(), layout);
        }
    }
}
