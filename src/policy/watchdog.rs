//! The instruction count, turned on only for a call that runs long.
//!
//! Lua 5.4 counts instructions through its hook: once a count hook is
//! set, the interpreter calls `luaG_traceexec` before *every* instruction
//! to decrement the count, whatever the count's period. That was 17% of
//! the instructions of a `queue_depth.lua` decision and 13% of its time
//! (issue 21, docs/PERFORMANCE.md), paid by every call for the few that
//! run away.
//!
//! So a decision starts with no hook, and a watchdog thread turns the
//! hook on for a call that is still running when it looks twice (between
//! [`POLL`] and twice that into the call): it sends the calling thread a
//! signal, and the handler sets the hook on the Lua state that thread is
//! running, as the standalone `lua` interpreter does for Ctrl-C
//! (`lua_sethook` is the one Lua API function that may be called from a
//! signal handler). From there the hook counts the instruction budget and
//! reads the deadline as before. The hook is set again when the call
//! ends, so loads, `init` and rendering keep it throughout. With no call
//! seen for [`QUIET_LOOKS`] looks in a row the watchdog sleeps until the
//! next call starts, so an idle scaler (or one between two ticks) does
//! not wake it 200 times a second.
//!
//! Where the signal cannot be had (another handler holds it, the thread
//! does not start), and for a policy timeout shorter than
//! [`ALWAYS_BELOW`], decisions keep the hook from their first
//! instruction, as before.

// The module's reason to be: a Lua state's hook set from a signal
// handler, with pthread_kill and sigaction.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mlua::ffi;

/// How often the watchdog looks at the calls in progress: a call is
/// counted from between one and two of these after it starts.
pub const POLL: Duration = Duration::from_millis(5);

/// A policy timeout shorter than this keeps the hook from a call's first
/// instruction (the deadline is read by the hook).
pub const ALWAYS_BELOW: Duration = Duration::from_millis(20);

/// Looks in a row with no call seen, in progress or since the last look,
/// after which the watchdog sleeps until a call starts ([`wake`]): a
/// scaler between two ticks, or with no targets, does not wake it 200
/// times a second.
const QUIET_LOOKS: u32 = 2;

/// The watchdog's thread, for [`wake`] to unpark; set by the thread
/// itself before it first sleeps.
static WATCHER: OnceLock<std::thread::Thread> = OnceLock::new();
/// True while the watchdog sleeps (or is about to) until a call starts.
static ASLEEP: AtomicBool = AtomicBool::new(false);

/// The hook, as the sandbox set it: what a call's end and the signal set
/// again.
#[derive(Clone, Copy)]
pub struct Hook {
    state: *mut ffi::lua_State,
    func: ffi::lua_Hook,
    mask: std::ffi::c_int,
    count: std::ffi::c_int,
}

// The state is only touched on the thread that holds the VM's lock
// (`Unhooked` is made inside it) or in the signal handler on that thread.
unsafe impl Send for Hook {}
unsafe impl Sync for Hook {}

impl Hook {
    /// The hook set on `state` now, or None when none is.
    ///
    /// # Safety
    /// `state` is a live Lua state whose VM lock the caller holds.
    unsafe fn read(state: *mut ffi::lua_State) -> Option<Self> {
        let func = ffi::lua_gethook(state)?;
        Some(Self {
            state,
            func,
            mask: ffi::lua_gethookmask(state),
            count: ffi::lua_gethookcount(state),
        })
    }

    /// # Safety
    /// On the thread holding the VM's lock, or in the signal handler on it.
    unsafe fn set(&self) {
        ffi::lua_sethook(self.state, Some(self.func), self.mask, self.count);
    }
}

/// One thread's calls, as the watchdog sees them.
struct Slot {
    /// Odd while a call without the hook is in progress.
    calls: AtomicU64,
    /// The watchdog's own: `calls` when it last looked, and the call it
    /// signalled last.
    seen: AtomicU64,
    signalled: AtomicU64,
    thread: libc::pthread_t,
}

static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// A thread's slot, taken out of the watchdog's list when the thread
/// ends (under the list's lock, so it is never signalled after).
struct Registered(Arc<Slot>);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    static SLOT: Registered = {
        // SAFETY: pthread_self has no preconditions.
        let slot = Arc::new(Slot {
            calls: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            signalled: AtomicU64::new(u64::MAX),
            thread: unsafe { libc::pthread_self() },
        });
        SLOTS.lock().unwrap_or_else(|p| p.into_inner()).push(slot.clone());
        Registered(slot)
    };
    /// The hook to set when the signal comes; None outside such a call.
    /// Read by the handler: a `const` thread local of a `Copy` type has
    /// no lazy initialisation and no destructor.
    static RUNNING: Cell<Option<Hook>> = const { Cell::new(None) };
}

/// The signal the watchdog sends, once its handler is installed and the
/// thread runs; None when either failed.
fn signal() -> Option<std::ffi::c_int> {
    static READY: OnceLock<Option<std::ffi::c_int>> = OnceLock::new();
    *READY.get_or_init(|| {
        let sig = libc::SIGRTMIN() + 2;
        if sig > libc::SIGRTMAX() || !install(sig) {
            return None;
        }
        std::thread::Builder::new()
            .name("tw-lua-watchdog".into())
            .spawn(move || watch(sig))
            .ok()
            .map(|_| sig)
    })
}

/// Installs the handler for `sig`, unless another one holds it.
fn install(sig: std::ffi::c_int) -> bool {
    // SAFETY: sigaction with a zeroed, then filled, struct; the handler
    // only reads a thread local and calls lua_sethook.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
            || old.sa_sigaction != libc::SIG_DFL
        {
            return false;
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_signal as extern "C" fn(std::ffi::c_int) as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(sig, &act, std::ptr::null_mut()) == 0
    }
}

extern "C" fn on_signal(_: std::ffi::c_int) {
    if let Some(hook) = RUNNING.with(Cell::get) {
        // SAFETY: RUNNING is set only while this thread runs a call in
        // the VM whose lock it holds; lua_sethook is signal-safe.
        unsafe { hook.set() }
    }
}

fn watch(sig: std::ffi::c_int) {
    // before the thread can ever be asleep: a call that sees it asleep
    // finds the thread to unpark
    let _ = WATCHER.set(std::thread::current());
    let mut quiet = 0;
    loop {
        std::thread::sleep(POLL);
        if look(sig) {
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet < QUIET_LOOKS {
            continue;
        }
        // Asleep, then one more look: a call that started before the flag
        // was set is seen here, and one that starts after it sees the
        // flag and unparks this thread (both sides sequentially
        // consistent, so one of the two always happens).
        ASLEEP.store(true, Ordering::SeqCst);
        if look(sig) {
            ASLEEP.store(false, Ordering::SeqCst);
        } else {
            while ASLEEP.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
        quiet = 0;
    }
}

/// One look at every thread's calls: signals a call seen in progress at
/// this look and the last. Returns whether any call was in progress or
/// had run since the last look.
fn look(sig: std::ffi::c_int) -> bool {
    let mut busy = false;
    let slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    for s in slots.iter() {
        let calls = s.calls.load(Ordering::SeqCst);
        let seen = s.seen.swap(calls, Ordering::Relaxed);
        busy |= calls % 2 == 1 || seen != calls;
        if calls % 2 == 1 && seen == calls && s.signalled.load(Ordering::Relaxed) != calls {
            s.signalled.store(calls, Ordering::Relaxed);
            // SAFETY: the thread is alive: it leaves the list under
            // this lock before it ends.
            unsafe { libc::pthread_kill(s.thread, sig) };
        }
    }
    busy
}

/// A call has started: the watchdog, if asleep, looks again from now.
fn wake() {
    if ASLEEP.load(Ordering::SeqCst) && ASLEEP.swap(false, Ordering::SeqCst) {
        if let Some(t) = WATCHER.get() {
            t.unpark();
        }
    }
}

/// The count hook set on `lua`'s main state now, or None when none is.
pub fn hook_of(lua: &mlua::Lua) -> Option<Hook> {
    // SAFETY: the main state, read inside the VM's lock
    lua.exec_raw_lua(|raw| unsafe { Hook::read(raw.state()) })
}

/// The mask of the hook set on the state running now (8,
/// `LUA_MASKCOUNT`, when the count hook is).
#[cfg(test)]
pub fn mask_now(lua: &mlua::Lua) -> std::ffi::c_int {
    // SAFETY: inside the VM's lock
    lua.exec_raw_lua(|raw| unsafe { ffi::lua_gethookmask(raw.state()) })
}

/// Runs `call` (a decision of the VM `lua`, whose hook is `hook`) inside
/// the VM's lock, without the count hook until the watchdog sets it, or
/// with it from the start where the watchdog cannot stand in (no hook
/// read, no signal, a `timeout` under [`ALWAYS_BELOW`]).
pub fn unhooked<R>(
    lua: &mlua::Lua,
    hook: Option<Hook>,
    timeout: Duration,
    call: impl FnOnce() -> R,
) -> R {
    lua.exec_raw_lua(|_| {
        // SAFETY: inside the VM's lock, held until `_fast` is dropped
        let _fast = hook.and_then(|h| unsafe { Unhooked::enter(h, timeout) });
        call()
    })
}

/// A call running without the count hook until the watchdog sets it;
/// the hook is set again when this is dropped.
struct Unhooked {
    hook: Hook,
}

impl Unhooked {
    /// Takes the hook off for a call of `timeout`, or None (the hook
    /// stays) where the watchdog cannot stand in for it.
    ///
    /// # Safety
    /// The caller holds the VM's lock until this is dropped, and `hook`
    /// is the VM's main state's.
    unsafe fn enter(hook: Hook, timeout: Duration) -> Option<Self> {
        if timeout < ALWAYS_BELOW {
            return None;
        }
        signal()?;
        ffi::lua_sethook(hook.state, None, 0, 0);
        RUNNING.with(|r| r.set(Some(hook)));
        // the call is published to the watchdog only once the handler
        // can set its hook: a signal sent for it always finds RUNNING
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        SLOT.with(|s| s.0.calls.fetch_add(1, Ordering::SeqCst));
        wake();
        Some(Self { hook })
    }
}

impl Drop for Unhooked {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(None));
        // the handler runs on this thread: once RUNNING is cleared, it
        // cannot set the hook after the line below
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        SLOT.with(|s| s.0.calls.fetch_add(1, Ordering::Release));
        // SAFETY: as in `enter`.
        unsafe { self.hook.set() }
    }
}
