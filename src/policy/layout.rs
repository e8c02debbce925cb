//! Where a Lua 5.4 table keeps its slots and a closure its upvalues, to
//! ask the CPU for them ahead of a call ([`crate::prefetch`]).
//!
//! The offsets are those of `Table` and `LClosure` in the vendored Lua
//! 5.4's `lobject.h` (x86_64). They are read only to make prefetch
//! addresses: an offset that no longer matched would cost wasted fills,
//! never a wrong value or a fault, and `the_offsets_match_this_lua`
//! fails first. Every read is inside the object's own header, which the
//! caller keeps alive (a registry reference), on the thread that runs
//! the VM.

use std::ffi::c_void;

use crate::prefetch;

/// `Table.lsizenode`: log2 of the number of hash slots.
const TABLE_LSIZENODE: usize = 11;
/// `Table.node`: the hash slots.
const TABLE_NODE: usize = 24;
/// `sizeof(Node)`.
const NODE_BYTES: usize = 24;
/// `LClosure.nupvalues`.
const CLOSURE_NUPVALUES: usize = 10;
/// `LClosure.upvals`: pointers to the `UpVal`s.
const CLOSURE_UPVALS: usize = 32;
/// `sizeof(UpVal)`: a closed upvalue keeps its value inside.
const UPVAL_BYTES: usize = 40;
/// At most this many lines of slots or upvalues for one object.
const MOST: usize = 8;

/// Reads the byte at `at` of a live object's header.
#[allow(unsafe_code)]
fn byte(obj: *const c_void, at: usize) -> u8 {
    // SAFETY: `obj` is a live Lua object (its caller holds a reference)
    // whose header is longer than `at`; the VM runs on this thread.
    unsafe { std::ptr::read_volatile(obj.cast::<u8>().add(at)) }
}

/// Reads the pointer at `at` of a live object's header.
#[allow(unsafe_code)]
fn pointer(obj: *const c_void, at: usize) -> *const u8 {
    // SAFETY: as in `byte`; the field is pointer-aligned in the header.
    unsafe { std::ptr::read_volatile(obj.cast::<u8>().add(at).cast::<*const u8>()) }
}

/// The first stage for a table or a closure: its header.
pub fn header(obj: *const c_void) {
    if !obj.is_null() {
        prefetch::line(obj);
    }
}

/// The second stage for a table (its header in cache by now): its hash
/// slots, where a field lookup by name goes.
pub fn table_slots(table: *const c_void) {
    if table.is_null() {
        return;
    }
    let node = pointer(table, TABLE_NODE);
    let slots = 1usize << (byte(table, TABLE_LSIZENODE) & 31);
    prefetch::lines(node, slots * NODE_BYTES, MOST);
}

/// The second stage for a Lua closure: its upvalues (a file's locals that
/// its functions use, each an object of its own).
pub fn closure_upvalues(closure: *const c_void) {
    if closure.is_null() {
        return;
    }
    let n = usize::from(byte(closure, CLOSURE_NUPVALUES)).min(MOST);
    for k in 0..n {
        let up = pointer(closure, CLOSURE_UPVALS + k * std::mem::size_of::<usize>());
        if !up.is_null() {
            prefetch::lines(up, UPVAL_BYTES, 1);
        }
    }
}

/// What the offsets read from a table and a closure, for the test that
/// checks them against this Lua.
#[cfg(test)]
pub(crate) fn read(table: *const c_void, closure: *const c_void) -> (u8, *const u8, u8, *const u8) {
    (
        byte(table, TABLE_LSIZENODE),
        pointer(table, TABLE_NODE),
        byte(closure, CLOSURE_NUPVALUES),
        pointer(closure, CLOSURE_UPVALS),
    )
}

#[cfg(test)]
mod tests {
    use mlua::{Function, Lua, Table};

    /// The offsets read the fields they name in this Lua: a table's
    /// log2 slots follow its keys, its slots are an array of their own,
    /// and a closure's upvalue count and first upvalue are where said.
    #[test]
    fn the_offsets_match_this_lua() {
        let lua = Lua::new();
        let table = |keys: usize| -> Table {
            let t = lua.create_table().unwrap();
            for k in 0..keys {
                t.raw_set(format!("k{k}"), k).unwrap();
            }
            t
        };
        let (two, twelve, thirty) = (table(2), table(12), table(30));
        let f: Function = lua
            .load("local a, b, c = 1, 2, 3 return function() return a + b + c end")
            .eval()
            .unwrap();
        let g: Function = lua
            .load("local a = 1 return function() return a end")
            .eval()
            .unwrap();
        let (lsize2, node2, nup_f, up_f) = super::read(two.to_pointer(), f.to_pointer());
        let (lsize12, node12, nup_g, up_g) = super::read(twelve.to_pointer(), g.to_pointer());
        let (lsize30, node30, _, _) = super::read(thirty.to_pointer(), f.to_pointer());
        assert_eq!(
            (lsize2, lsize12, lsize30),
            (1, 4, 5),
            "2, 12 and 30 keys: 2, 16 and 32 slots"
        );
        for (node, t) in [(node2, &two), (node12, &twelve), (node30, &thirty)] {
            assert!(!node.is_null());
            assert_ne!(node.cast(), t.to_pointer(), "the slots are not the header");
        }
        assert!(
            node2 != node12 && node12 != node30,
            "each table has slots of its own"
        );
        assert_eq!((nup_f, nup_g), (3, 1));
        // a closed upvalue points at its own value, inside it (`v.p` at
        // 16, the value at 24), and g's holds the integer 1
        for up in [up_f, up_g] {
            let up = up.cast::<std::ffi::c_void>();
            assert_eq!(super::pointer(up, 16), up.cast::<u8>().wrapping_add(24));
        }
        let value = super::pointer(up_g.cast(), 24) as usize;
        assert_eq!(value, 1, "g's upvalue a = 1");
    }
}
