//! The binary's global allocator: mimalloc, asked for a plain `mi_malloc` block whenever a
//! word's alignment is enough, which is nearly every Rust allocation.
//!
//! `mimalloc::MiMalloc` hands every allocation to `mi_malloc_aligned`, whose fast path
//! covers blocks up to 1 KiB only: a larger one (a boxed request stage, a read buffer, a
//! grown `Vec`) took its generic path, which over-allocates by the alignment and marks the
//! page as holding interior pointers. A plain request spent ~6.4k instructions in
//! `__rust_alloc` that way and ~3.7k this way (callgrind, docs/benchmarks.md, "Session
//! 16"). Every block mimalloc hands out is aligned to a word at least (its size classes
//! are whole words, a page's first block 16-byte aligned), so a layout that asks no more
//! gets `mi_malloc`; the others (a task's 128-byte padding, a `u128` field's 16) keep
//! `mi_malloc_aligned`. `mi_free` takes either.
#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

pub struct MiMalloc;

// SAFETY: each method hands `GlobalAlloc`'s contract to mimalloc's C API, which returns
// blocks of at least the size asked (or null) that stay valid until `mi_free`: plain
// calls only where `layout.align()` is at most a word, which every mimalloc block has;
// the aligned calls otherwise.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes from a byte to past mimalloc's small and medium classes, at every alignment
    /// from 1 to a task's 128: each block is aligned, zeroed when asked, and keeps its
    /// bytes and its alignment through growing and shrinking.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let sizes = (1..=160).chain((161..=70_000).step_by(997));
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                let fill = |len: usize| (0..len).map(move |i| (i * 7 + size) as u8);
                let aligned =
                    |block: *mut u8| !block.is_null() && (block as usize).is_multiple_of(align);
                // SAFETY: nonzero sizes; every block is freed once, with its current layout.
                unsafe {
                    let zeroed = MiMalloc.alloc_zeroed(layout);
                    assert!(aligned(zeroed), "{layout:?}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|b| *b == 0));
                    MiMalloc.dealloc(zeroed, layout);

                    let mut block = MiMalloc.alloc(layout);
                    assert!(aligned(block), "{layout:?}");
                    for (i, byte) in fill(size).enumerate() {
                        block.add(i).write(byte);
                    }
                    let (mut current, mut written) = (layout, size);
                    for new_size in [size * 3 + 5, size.div_ceil(2)] {
                        block = MiMalloc.realloc(block, current, new_size);
                        assert!(aligned(block), "{layout:?} → {new_size}");
                        written = written.min(new_size);
                        let bytes = std::slice::from_raw_parts(block, written);
                        assert!(bytes.iter().copied().eq(fill(written)), "{layout:?} → {new_size}");
                        current = Layout::from_size_align(new_size, align).expect("valid");
                    }
                    MiMalloc.dealloc(block, current);
                }
            }
        }
    }
}
