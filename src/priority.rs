//! The calling thread's share of the CPU, for work that must not take a
//! core from a decision: refits and the encoding of a scrape; and the
//! process's transparent huge pages ([`without_huge_pages`]). Lowering is
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

/// Turns transparent huge pages off for this process (Linux
/// `PR_SET_THP_DISABLE`), unless `MIMALLOC_ALLOW_THP` is set, which then
/// decides as mimalloc documents it. mimalloc asks for huge pages
/// (`MADV_HUGEPAGE`) on the regions it maps, so a first touch of a region
/// zeroes 2 MB at once, and again after it gives idle memory back. At
/// 50,000 targets that zeroing was three quarters of the start's CPU
/// (ready in 6 to 7 s, 1.2 to 1.4 s without) and faulted 2 MB pages into
/// the runtime's workers while they carried signals (PERFORMANCE.md, "Huge
/// pages off, and a scrape's kept buffers"). Returns whether they are off.
pub fn without_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(2) PR_SET_THP_DISABLE with the documented
        // arguments; it only sets a flag of this process's memory.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "PR_SET_THP_DISABLE refused");
        }
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Whether transparent huge pages are off for this process (Linux), for
/// tests.
pub fn huge_pages_off() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(2) PR_GET_THP_DISABLE reads a flag of this process.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
    }
    #[cfg(not(target_os = "linux"))]
    false
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

#[cfg(test)]
mod tests {
    /// Off for the process unless `MIMALLOC_ALLOW_THP` decides; the
    /// kernel's own view (/proc/self/status) agrees.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_go_off_for_the_process() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            assert!(!super::without_huge_pages(), "the variable decides");
            return;
        }
        assert!(super::without_huge_pages());
        assert!(super::huge_pages_off());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{status}");
    }
}
