//! Helpers shared by the host's unit tests.

/// Runs `f` on a thread that file modes apply to even as root: CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH are cleared from that thread's effective set only.
pub(crate) fn without_dac_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut h = Header {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let mut d = [Data::default(); 2];
            let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
            assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
            d[0].effective &= !((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH));
            let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
            assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}
