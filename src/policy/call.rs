//! The call in progress on this thread, and the two reads a decision makes
//! most (`ctx.window(metric, span, stat)` and `ctx.forecast(metric,
//! horizon, field)`) as plain Lua C functions.
//!
//! A read made through mlua's `create_function` crosses mlua's callback
//! machinery (its lock, a protected frame for errors, the arguments
//! converted one by one) and then the two locks of the VM's current view:
//! about 8% of a `queue_depth.lua` decision, which reads three numbers
//! (issue 21, docs/PERFORMANCE.md). The C functions here read their
//! integer and number arguments off the Lua stack, find the view through
//! a thread-local the call sets, and push one number or nil. Anything
//! else (an argument of another type, a metric or field out of range, a
//! span longer than the windows, no call in progress, a panic) they do
//! not handle: they return `nil, true` and the Lua side makes the same
//! read through the mlua function, which gives the error it always gave.
//! So no Lua error is raised from here, and no Rust value is live while
//! a Lua function that could raise one runs.

// The module's reason to be: functions called by the Lua interpreter
// with its raw state, and a thread-local pointer to the view of the call
// that sets it.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use mlua::ffi;

use super::{horizon_ms, metric_at, SharedView, SignalView};
use crate::event::Metric;

/// The call in progress on this thread: which VM it runs in and the view
/// its reads see.
#[derive(Clone, Copy)]
struct Call {
    vm: usize,
    view: NonNull<Mutex<dyn SignalView>>,
}

thread_local! {
    static CALL: Cell<Option<Call>> = const { Cell::new(None) };
}

/// A VM's identity for [`CALL`], also written into its main Lua thread's
/// extra space, where the C functions read it (a policy has no coroutine
/// library, so its code runs on that thread). The call sets which
/// target's data the reads see, so the VM's one set of read functions
/// serves every target in it (a slice's targets share their functions'
/// memory instead of touching four closures of their own each).
#[derive(Clone, Copy)]
pub(super) struct Current {
    vm: usize,
}

/// Restores the thread's call as it was when the call ends, however it
/// ends.
pub(super) struct Reading<'a> {
    before: Option<Call>,
    _view: std::marker::PhantomData<&'a SharedView>,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        CALL.set(self.before);
    }
}

impl Current {
    /// A new identity, written into `lua`'s extra space (call it before
    /// the VM runs any code).
    pub(super) fn new(lua: &mlua::Lua) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let vm = NEXT.fetch_add(1, Ordering::Relaxed);
        // SAFETY: LUA_EXTRASPACE (a pointer's size) is Lua's memory for
        // the application before each lua_State; the main state is the
        // current one outside any call.
        lua.exec_raw_lua(|raw| unsafe {
            ffi::lua_getextraspace(raw.state())
                .cast::<usize>()
                .write(vm);
        });
        Self { vm }
    }

    /// The reads of this VM see `view` (none: they fail) until the
    /// returned guard is dropped.
    pub(super) fn reading<'a>(&self, view: Option<&'a SharedView>) -> Reading<'a> {
        let call = view.map(|v| Call {
            vm: self.vm,
            // SAFETY: from a reference; it outlives the guard ('a), and the
            // guard's drop takes the pointer out of CALL again
            view: NonNull::from(&**v),
        });
        Reading {
            before: CALL.replace(call),
            _view: std::marker::PhantomData,
        }
    }

    /// Runs `f` on the running call's data.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn SignalView) -> mlua::Result<T>,
    ) -> mlua::Result<T> {
        let view = call_in(self.vm)
            .ok_or_else(|| mlua::Error::runtime("ctx reads only work during a policy call"))?;
        // SAFETY: CALL holds a view only while the `Reading` that borrows
        // it lives (see `reading`)
        let view = unsafe { view.as_ref() };
        let mut view = view
            .lock()
            .map_err(|_| mlua::Error::runtime("signal data lock poisoned"))?;
        f(&mut *view)
    }
}

/// The view of the call running on this thread in VM `vm`.
fn call_in(vm: usize) -> Option<NonNull<Mutex<dyn SignalView>>> {
    CALL.get().filter(|c| c.vm == vm).map(|c| c.view)
}

/// `f` on the view of the call running in the VM of `l`, None without
/// one (or on a panic, which the mlua path then meets and reports).
///
/// # Safety
/// `l` is a live Lua state of a VM made with [`Current::new`].
unsafe fn with_view<T>(
    l: *mut ffi::lua_State,
    f: impl FnOnce(&mut dyn SignalView) -> Option<T>,
) -> Option<T> {
    let view = call_in(ffi::lua_getextraspace(l).cast::<usize>().read())?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as in `Current::with`
        let mut view = unsafe { view.as_ref() }.lock().ok()?;
        f(&mut *view)
    }))
    .ok()
    .flatten()
}

/// Argument `i` as a metric's index, None if it is not one.
unsafe fn metric(l: *mut ffi::lua_State, i: c_int) -> Option<Metric> {
    metric_at(usize::try_from(integer(l, i)?).ok()?).ok()
}

/// Argument `i` as an integer, None if it is not one.
unsafe fn integer(l: *mut ffi::lua_State, i: c_int) -> Option<i64> {
    let mut ok = 0;
    let n = ffi::lua_tointegerx(l, i, &mut ok);
    (ok != 0).then_some(n)
}

/// Argument `i` as a number, None if it is not one.
unsafe fn number(l: *mut ffi::lua_State, i: c_int) -> Option<f64> {
    let mut ok = 0;
    let n = ffi::lua_tonumberx(l, i, &mut ok);
    (ok != 0).then_some(n)
}

/// Pushes what a read found (a number, or nil for none) or `nil, true`
/// for a read the mlua function has to make. Pushing a number, nil or a
/// boolean cannot raise an error, and a C function has 20 free slots.
unsafe fn push(l: *mut ffi::lua_State, found: Option<Option<f64>>) -> c_int {
    match found {
        Some(Some(x)) => ffi::lua_pushnumber(l, x),
        Some(None) => ffi::lua_pushnil(l),
        None => {
            ffi::lua_pushnil(l);
            ffi::lua_pushboolean(l, 1);
            return 2;
        }
    }
    1
}

/// [`stat`] as a Lua function.
pub(super) fn stat_function(lua: &mlua::Lua) -> mlua::Result<mlua::Function> {
    // SAFETY: it raises no Lua error and reads only its arguments
    unsafe { lua.create_c_function(stat) }
}

/// [`forecast`] as a Lua function.
pub(super) fn forecast_function(lua: &mlua::Lua) -> mlua::Result<mlua::Function> {
    // SAFETY: as `stat_function`
    unsafe { lua.create_c_function(forecast) }
}

/// `stat(metric index, span ms, statistic index)`: `ctx.window`'s one
/// statistic.
unsafe extern "C-unwind" fn stat(l: *mut ffi::lua_State) -> c_int {
    let found = (|| {
        let metric = metric(l, 1)?;
        let span_ms = integer(l, 2)?;
        let stat = usize::try_from(integer(l, 3)?).ok()?;
        with_view(l, |view| {
            view.note_read(metric);
            view.window_stat(metric, span_ms, stat).ok()
        })
    })();
    push(l, found)
}

/// `forecast(metric index, horizon s, field)` for the fields that are
/// numbers (1 value, 2 lower, 3 upper): `ctx.forecast`'s one field.
unsafe extern "C-unwind" fn forecast(l: *mut ffi::lua_State) -> c_int {
    let found = (|| {
        let metric = metric(l, 1)?;
        let horizon_ms = horizon_ms(number(l, 2)?)?;
        let field = integer(l, 3).filter(|f| (1..=3).contains(f))?;
        with_view(l, |view| {
            let f = view.forecast(metric, horizon_ms);
            Some(f.map(|f| match field {
                1 => f.value,
                2 => f.lower,
                _ => f.upper,
            }))
        })
    })();
    push(l, found)
}
