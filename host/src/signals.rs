//! SIGINT and SIGTERM (DESIGN §4): the first one cancels cooperatively, a second one
//! stops the process at once.
//!
//! [`install`] blocks both signals in the calling thread before any other thread
//! exists (so every later thread, plugins' included, inherits the mask) and starts one
//! thread that waits for them with `sigwait`. On the first signal it sets the cancel
//! flag of every live [`crate::job::Job`] (jobs register through [`watch`]): running
//! plugin calls see `check_cancelled`, copies and downloads stop at their next poll,
//! staging directories are removed as the calls unwind, partial downloads stay in the
//! store to be resumed, and the database is left as its last committed transaction.
//! The command then ends with exit code 130 (SIGINT) or 143 (SIGTERM). On a second
//! signal the process exits at once with the same code.
//!
//! Child processes (`git`, the OCI runtime) start with an empty signal mask: the
//! standard library resets it before `exec`.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Cancel flags of the live jobs.
static FLAGS: Mutex<Vec<Weak<AtomicBool>>> = Mutex::new(Vec::new());

/// The exit code of a command stopped by `signal` (128 + its number).
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// The name of a signal kiln handles.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The signal that cancelled this process, if one arrived.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Cancels `flag` when a signal arrives (at once if one already did). Jobs call this
/// when they are created.
pub fn watch(flag: &Arc<AtomicBool>) {
    let mut flags = FLAGS.lock().unwrap_or_else(|e| e.into_inner());
    flags.retain(|w| w.strong_count() > 0);
    flags.push(Arc::downgrade(flag));
    drop(flags);
    if received().is_some() {
        flag.store(true, Ordering::SeqCst);
    }
}

fn cancel_all() {
    let flags = FLAGS.lock().unwrap_or_else(|e| e.into_inner());
    for f in flags.iter().filter_map(Weak::upgrade) {
        f.store(true, Ordering::SeqCst);
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Takes over SIGINT and SIGTERM. Call first thing in `main`, before any thread starts.
pub fn install() {
    let set = signal_set();
    // SAFETY: changes this thread's signal mask only.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        tracing::warn!("cannot block SIGINT/SIGTERM: error {rc}; signals stop kiln at once");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits for a signal of the (blocked) set.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if RECEIVED
                .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                eprintln!(
                    "kiln: {} received, cancelling (send it again to stop at once)",
                    name(sig)
                );
                cancel_all();
            } else {
                eprintln!("kiln: {} received again, stopping now", name(sig));
                let first = RECEIVED.load(Ordering::SeqCst);
                // SAFETY: ends the process without running anything else.
                unsafe { libc::_exit(exit_code(first) as libc::c_int) };
            }
        });
    if let Err(e) = spawned {
        // Without the waiting thread, blocked signals would be ignored: undo the block.
        // SAFETY: changes this thread's signal mask only.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        tracing::warn!("cannot start the signal thread: {e}; signals stop kiln at once");
    }
}
