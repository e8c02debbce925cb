//! The calling thread's share of the CPU, for work that must not take a
//! core from a decision: refits and the encoding of a scrape. Lowering is
//! all there is: an unprivileged process can lower a thread's priority but
//! never raise it again (RLIMIT_NICE), so only threads that do nothing
//! else are lowered. Elsewhere than Linux, or when refused, the thread
//! keeps the normal priority.
#![allow(unsafe_code)]

/// Puts the calling thread in Linux's SCHED_IDLE class: it runs only on a
/// core nothing else wants (and may wait indefinitely on a full machine).
pub fn idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler(2) on the calling thread (pid 0) with
        // a valid sched_param; it only changes this thread's scheduling.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE refused");
        }
    }
}

/// Gives the calling thread the nice value `nice` (0 to 19; 19 is the
/// least share): unlike [`idle`] it still gets a share of a full machine
/// (at 19 about 1.5% of a core beside one busy normal thread).
pub fn nice(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority(2); on Linux PRIO_PROCESS with 0 is the
        // calling thread only.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice.clamp(0, 19)) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), nice, "setpriority refused");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's scheduling class and nice value (Linux), for
/// tests.
pub fn current() -> (i32, i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both read the calling thread's own scheduling; getpriority
        // can return -1 legitimately, which is fine for a test's reading.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        }
    }
    #[cfg(not(target_os = "linux"))]
    (0, 0)
}
