//! The shared building block of every policy here: a slab of nodes threaded onto intrusive doubly-linked lists.
//!
//! Why a slab with `u32` links instead of `Box`ed nodes or `VecDeque`s: moving an entry between queues (S3-FIFO
//! small → main, SLRU probation → protected, LRU move-to-front) is then a few index writes, with no allocation and no
//! `unsafe`; freed slots are chained through `next` and reused, so after warm-up inserts do not allocate either.

/// "No node": the end of a list, or an empty free chain.
pub(crate) const NIL: u32 = u32::MAX;

/// One cached object. `value` is `None` only while the slot sits on the free chain.
#[derive(Debug)]
pub(crate) struct Node<V> {
    pub(crate) key: u64,
    pub(crate) value: Option<V>,
    pub(crate) size_bytes: u64,
    pub(crate) prev: u32,
    pub(crate) next: u32,
    /// Policy-specific access counter (S3-FIFO's 2-bit frequency); unused by LRU and W-TinyLFU.
    pub(crate) freq: u8,
    /// Which list the node is on (policy-specific tag), so lookups know where to unlink from.
    pub(crate) queue: u8,
}

/// Head, tail, length and byte total of one intrusive list. The byte total is what the byte-bounded policies steer by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) len: usize,
    pub(crate) bytes: u64,
}

impl List {
    pub(crate) const fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
            bytes: 0,
        }
    }

    pub(crate) const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Node storage with a free chain; the lists live outside (as fields of the policy) so that a policy can borrow the
/// slab and one list mutably at the same time.
#[derive(Debug)]
pub(crate) struct Slab<V> {
    nodes: Vec<Node<V>>,
    free_head: u32,
}

impl<V> Slab<V> {
    pub(crate) const fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free_head: NIL,
        }
    }

    /// Stores a node (unlinked) and returns its index.
    pub(crate) fn alloc(&mut self, key: u64, value: V, size_bytes: u64, queue: u8) -> u32 {
        let node = Node {
            key,
            value: Some(value),
            size_bytes,
            prev: NIL,
            next: NIL,
            freq: 0,
            queue,
        };
        if self.free_head != NIL {
            let idx = self.free_head;
            let slot = &mut self.nodes[idx as usize];
            debug_assert!(slot.value.is_none(), "free chain points at a live node");
            self.free_head = slot.next;
            *slot = node;
            idx
        } else {
            let idx =
                u32::try_from(self.nodes.len()).expect("more than u32::MAX - 1 cached objects");
            assert!(idx != NIL, "more than u32::MAX - 1 cached objects");
            self.nodes.push(node);
            idx
        }
    }

    /// Frees an unlinked node and gives back its key, value and size.
    pub(crate) fn release(&mut self, idx: u32) -> (u64, V, u64) {
        let free_head = self.free_head;
        let node = &mut self.nodes[idx as usize];
        debug_assert!(
            node.prev == NIL && node.next == NIL,
            "releasing a node that is still linked"
        );
        let value = node.value.take().expect("releasing a free slot");
        node.next = free_head;
        self.free_head = idx;
        (node.key, value, node.size_bytes)
    }

    pub(crate) fn node(&self, idx: u32) -> &Node<V> {
        &self.nodes[idx as usize]
    }

    pub(crate) fn node_mut(&mut self, idx: u32) -> &mut Node<V> {
        &mut self.nodes[idx as usize]
    }

    /// The value of a live node.
    pub(crate) fn value(&self, idx: u32) -> &V {
        self.nodes[idx as usize]
            .value
            .as_ref()
            .expect("value of a free slot")
    }

    /// Links an unlinked node at the head (most recent end) of `list`.
    pub(crate) fn push_front(&mut self, list: &mut List, idx: u32) {
        let old_head = list.head;
        {
            let node = &mut self.nodes[idx as usize];
            debug_assert!(
                node.prev == NIL && node.next == NIL,
                "pushing a node that is already linked"
            );
            node.next = old_head;
            list.bytes += node.size_bytes;
        }
        if old_head == NIL {
            list.tail = idx;
        } else {
            self.nodes[old_head as usize].prev = idx;
        }
        list.head = idx;
        list.len += 1;
    }

    /// Unlinks a node that is on `list`.
    pub(crate) fn unlink(&mut self, list: &mut List, idx: u32) {
        let (prev, next, size_bytes) = {
            let node = &self.nodes[idx as usize];
            (node.prev, node.next, node.size_bytes)
        };
        if prev == NIL {
            debug_assert_eq!(list.head, idx, "unlinking a node from the wrong list");
            list.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            debug_assert_eq!(list.tail, idx, "unlinking a node from the wrong list");
            list.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        let node = &mut self.nodes[idx as usize];
        node.prev = NIL;
        node.next = NIL;
        list.len -= 1;
        list.bytes -= size_bytes;
    }

    /// Unlinks and returns the tail (least recent end) of `list`.
    pub(crate) fn pop_back(&mut self, list: &mut List) -> Option<u32> {
        let idx = list.tail;
        if idx == NIL {
            return None;
        }
        self.unlink(list, idx);
        Some(idx)
    }

    /// Moves a node already on `list` to its head.
    pub(crate) fn move_to_front(&mut self, list: &mut List, idx: u32) {
        if list.head != idx {
            self.unlink(list, idx);
            self.push_front(list, idx);
        }
    }

    /// Drops every node and the free chain (keeps the allocation).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
        self.free_head = NIL;
    }

    /// Walks `list` head to tail and checks links, queue tags, length and bytes; O(n), for tests.
    pub(crate) fn check_list(&self, list: &List, queue: u8) {
        let mut len = 0_usize;
        let mut bytes = 0_u64;
        let mut prev = NIL;
        let mut idx = list.head;
        while idx != NIL {
            let node = &self.nodes[idx as usize];
            assert!(node.value.is_some(), "list holds a free slot");
            assert_eq!(node.prev, prev, "broken back link");
            assert_eq!(node.queue, queue, "node tagged with another queue");
            len += 1;
            bytes += node.size_bytes;
            prev = idx;
            idx = node.next;
        }
        assert_eq!(list.tail, prev, "tail is not the last node");
        assert_eq!(list.len, len, "list length accounting");
        assert_eq!(list.bytes, bytes, "list byte accounting");
    }
}
