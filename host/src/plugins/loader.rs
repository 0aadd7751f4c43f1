//! Opening one plugin file: permission checks, the optional sha256 pin, `dlopen` of the
//! verified bytes, the plugin-api version check, abi_stable's checks, and `describe`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use abi_stable::library::{AbiHeaderRef, LibraryError, ROOT_MODULE_LOADER_NAME_WITH_NUL};
use kiln_plugin_api::abi::{
    api_compatible, PluginDeclaration, SourcePluginRef, DECLARATION_MAGIC, DECLARATION_SYMBOL,
};
use kiln_plugin_api::API_VERSION;
use sha2::{Digest, Sha256};

/// Why a file could not be opened as a plugin. The message is one short line; the
/// caller prefixes the plugin id and path.
#[derive(Debug)]
pub struct OpenError {
    /// The short reason.
    pub reason: String,
    /// Extra detail for debug logs (e.g. abi_stable's full layout report).
    pub detail: Option<String>,
    /// The plugin-api version the file declares, if it was read.
    pub api_version: Option<String>,
}

impl OpenError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: None,
            api_version: None,
        }
    }
}

/// A plugin library opened and checked, with its root module.
pub struct OpenedLibrary {
    /// The root module (the library is leaked: plugins are never unloaded).
    pub module: SourcePluginRef,
    /// The sha256 of the file's bytes, when it was computed.
    pub sha256: Option<String>,
    /// The plugin-api version the plugin declares.
    pub api_version: String,
}

/// Opens `path` as a kiln plugin.
///
/// The file is opened once with `O_NOFOLLOW` (a symlink is refused), checked to be a
/// regular file not writable by group or others, and then loaded through that same open
/// file. With `pin` (or `hash`), its bytes are read once, hashed, compared with the pin
/// and copied into a sealed memfd, and the memfd is what `dlopen` loads: the bytes that
/// run are the bytes that were verified.
pub fn open_plugin(path: &Path, pin: Option<&str>, hash: bool) -> Result<OpenedLibrary, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OpenError::new("refusing a symlinked plugin file"),
            _ => OpenError::new(format!("cannot open: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| OpenError::new(format!("cannot stat: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(OpenError::new("not a regular file"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(OpenError::new(format!(
            "refusing a plugin file writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(OpenError::new(format!(
            "refusing a plugin file owned by uid {}: it must belong to root or to the user running kiln (uid {euid})",
            meta.uid()
        )));
    }
    let mut magic = [0u8; 4];
    let is_elf = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
        && magic == *b"\x7fELF";
    if !is_elf {
        return Err(OpenError::new(
            "not a kiln plugin: not an ELF shared library",
        ));
    }

    let (load_fd, sha256) = match pin {
        // Pinned: the bytes that run are the bytes that were verified.
        Some(pin) => {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            (&file)
                .read_to_end(&mut bytes)
                .map_err(|e| OpenError::new(format!("cannot read: {e}")))?;
            let digest = hex::encode(Sha256::digest(&bytes));
            if pin != digest {
                return Err(OpenError::new(format!(
                    "sha256 mismatch: the configuration pins {pin}, the file has {digest}"
                )));
            }
            // The loader maps what the headers describe: a segment past the end of the
            // file would be a SIGBUS at the first touch, so check before `dlopen`.
            elf::check(&bytes[..], bytes.len() as u64).map_err(elf_error)?;
            (sealed_memfd(&bytes)?, Some(digest))
        }
        // Unpinned: the hash is for display only (`plugins list`), read from the same
        // open file that is then loaded.
        None if hash => {
            elf::check(&file, meta.len()).map_err(elf_error)?;
            let digest =
                reader_sha256(&file).map_err(|e| OpenError::new(format!("cannot read: {e}")))?;
            (file, Some(digest))
        }
        None => {
            elf::check(&file, meta.len()).map_err(elf_error)?;
            (file, None)
        }
    };

    let fd_path = format!("/proc/self/fd/{}", load_fd.as_raw_fd());
    // SAFETY: loading a plugin runs its initialisers: plugins are trusted code by
    // design (DESIGN §2), and this file passed the operator's checks above.
    let lib = unsafe {
        libloading::os::unix::Library::open(Some(&fd_path), libc::RTLD_NOW | libc::RTLD_LOCAL)
    }
    .map_err(|e| {
        let msg = e.to_string().replace(&fd_path, &path.display().to_string());
        OpenError::new(format!("cannot load the shared library: {msg}"))
    })?;
    // From here on the library stays loaded whatever happens: its initialisers ran,
    // and unloading Rust code is unsound (TLS destructors); plugins are never unloaded.
    let lib = std::mem::ManuallyDrop::new(lib);
    // Keep the descriptor open for the life of the process: the dynamic loader knows
    // the library by the name `/proc/self/fd/N`, and a later `dlopen` of a reused N
    // would be answered with this library instead of the new file.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(load_fd);

    let declaration: PluginDeclaration = unsafe {
        match lib.get::<*const PluginDeclaration>(DECLARATION_SYMBOL.as_bytes()) {
            Ok(sym) => **sym,
            Err(_) => {
                return Err(OpenError::new(format!(
                    "not a kiln plugin: it exports no `{DECLARATION_SYMBOL}` symbol"
                )))
            }
        }
    };
    if declaration.magic != DECLARATION_MAGIC {
        return Err(OpenError::new(format!(
            "not a kiln plugin: its `{DECLARATION_SYMBOL}` symbol has the wrong magic bytes"
        )));
    }
    let api_version = declaration.api_version().to_string();
    if !api_compatible(API_VERSION, &api_version) {
        let mut e = OpenError::new(format!(
            "built for plugin-api {api_version}, but this kiln provides plugin-api {API_VERSION}; rebuild the plugin against plugin-api {API_VERSION}"
        ));
        e.api_version = Some(api_version);
        return Err(e);
    }

    let header: AbiHeaderRef = unsafe {
        match lib.get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) {
            Ok(sym) => *sym,
            Err(_) => {
                return Err(OpenError::new(
                    "not a kiln plugin: it exports no abi_stable root module",
                ))
            }
        }
    };
    let module = header
        .upgrade()
        .and_then(|h| h.init_root_module::<SourcePluginRef>())
        .map_err(library_error)?;
    Ok(OpenedLibrary {
        module,
        sha256,
        api_version,
    })
}

fn elf_error(reason: String) -> OpenError {
    OpenError::new(format!("not a usable shared library: {reason}"))
}

/// A short line for an abi_stable error, with the full report kept for debug logs.
fn library_error(e: LibraryError) -> OpenError {
    let full = e.to_string();
    let reason = match &e {
        LibraryError::InvalidAbiHeader(_) => {
            "built with an incompatible abi_stable version".to_string()
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "built for plugin-api {actual_version}, but this kiln provides plugin-api {expected_version}"
        ),
        LibraryError::AbiInstability(_) => {
            let tail: Vec<&str> = full
                .lines()
                .filter(|l| l.trim_start().starts_with("Error:"))
                .take(3)
                .collect();
            format!(
                "its plugin-api types do not match this kiln's ({}); rebuild it against plugin-api {API_VERSION}",
                if tail.is_empty() { "layout mismatch".to_string() } else { tail.join("; ") }
            )
        }
        LibraryError::RootModule { .. } => "its root module constructor failed".to_string(),
        _ => full.lines().next().unwrap_or("abi_stable refused it").to_string(),
    };
    OpenError {
        reason,
        detail: Some(full),
        api_version: None,
    }
}

/// Copies `bytes` into an anonymous memory file sealed against any change.
fn sealed_memfd(bytes: &[u8]) -> Result<File, OpenError> {
    let name = CString::new("kiln-plugin").expect("no NUL");
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(OpenError::new(format!(
            "memfd_create failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just created and is owned here.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)
        .map_err(|e| OpenError::new(format!("cannot copy into memfd: {e}")))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(OpenError::new(format!(
            "cannot seal memfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(file)
}

/// The sha256 (hex) of everything `file` holds, read from its start.
fn reader_sha256(file: &File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    loop {
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks an ELF shared object against its own headers before any of it is mapped:
/// `dlopen` maps the loadable segments the program headers name, and touching a mapped
/// page past the end of the file (a truncated or cut copy) kills the process with
/// SIGBUS. Nothing here trusts a header field without a bounds check.
pub(crate) mod elf {
    use std::fs::File;

    /// Bytes readable at an offset: a file or a buffer.
    pub trait Source {
        /// Fills `buf` from `offset`; false if the source ends first.
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool;
    }

    impl Source for &File {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool {
            std::os::unix::fs::FileExt::read_exact_at(*self, buf, offset).is_ok()
        }
    }

    impl Source for &[u8] {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> bool {
            let Ok(start) = usize::try_from(offset) else {
                return false;
            };
            match start
                .checked_add(buf.len())
                .and_then(|end| self.get(start..end))
            {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    const EHDR64: usize = 64;
    const PHDR64: usize = 56;
    const SHDR64: usize = 64;
    const ET_DYN: u16 = 3;
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;

    #[cfg(target_arch = "x86_64")]
    const MACHINE: (u16, &str) = (62, "x86-64");
    #[cfg(target_arch = "aarch64")]
    const MACHINE: (u16, &str) = (183, "aarch64");
    #[cfg(target_arch = "riscv64")]
    const MACHINE: (u16, &str) = (243, "riscv64");

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
    }

    /// `Ok` if the file of `len` bytes is a 64-bit little-endian shared object for this
    /// machine whose header tables and loadable segments all lie inside the file;
    /// otherwise what is wrong, in a few words.
    pub fn check(src: impl Source, len: u64) -> Result<(), String> {
        let mut eh = [0u8; EHDR64];
        if !src.read_exact_at(&mut eh, 0) {
            return Err(format!(
                "the file is cut short ({len} bytes, smaller than an ELF header)"
            ));
        }
        if eh[..4] != *b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        if eh[4] != 2 {
            return Err(format!(
                "ELF class {} (this kiln loads 64-bit objects only)",
                eh[4]
            ));
        }
        if eh[5] != 1 {
            return Err("big-endian ELF (this machine is little-endian)".into());
        }
        let e_type = u16_at(&eh, 16);
        if e_type != ET_DYN {
            return Err(format!("ELF type {e_type} is not a shared object"));
        }
        let machine = u16_at(&eh, 18);
        if machine != MACHINE.0 {
            return Err(format!(
                "built for ELF machine {machine}, not for this {} machine",
                MACHINE.1
            ));
        }
        let phoff = u64_at(&eh, 32);
        let shoff = u64_at(&eh, 40);
        let phentsize = u16_at(&eh, 54) as usize;
        let phnum = u16_at(&eh, 56) as u64;
        let shentsize = u16_at(&eh, 58) as u64;
        let shnum = u16_at(&eh, 60) as u64;
        if phnum == 0 || phentsize != PHDR64 {
            return Err("no usable program header table".into());
        }
        let table_end = |off: u64, n: u64, size: u64| off.checked_add(n.checked_mul(size)?);
        match table_end(phoff, phnum, PHDR64 as u64) {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "the file is cut short: its program headers end past its {len} bytes"
                ))
            }
        }
        if shoff != 0 {
            if shnum != 0 && shentsize != SHDR64 as u64 {
                return Err("section headers of the wrong size".into());
            }
            match table_end(shoff, shnum, SHDR64 as u64) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(format!(
                        "the file is cut short: its section headers end past its {len} bytes"
                    ))
                }
            }
        }
        let mut ph = vec![0u8; phnum as usize * PHDR64];
        if !src.read_exact_at(&mut ph, phoff) {
            return Err("cannot read its program headers".into());
        }
        let mut loads = 0;
        for (i, p) in ph.chunks_exact(PHDR64).enumerate() {
            let kind = u32_at(p, 0);
            if kind != PT_LOAD && kind != PT_DYNAMIC {
                continue;
            }
            let offset = u64_at(p, 8);
            let filesz = u64_at(p, 32);
            let memsz = u64_at(p, 40);
            match offset.checked_add(filesz) {
                Some(end) if end <= len => {}
                _ => {
                    return Err(format!(
                        "the file is cut short: segment {i} needs bytes up to {} but the file has {len}",
                        offset.saturating_add(filesz)
                    ))
                }
            }
            if kind == PT_LOAD {
                if filesz > memsz {
                    return Err(format!("segment {i} is larger on disk than in memory"));
                }
                loads += 1;
            }
        }
        if loads == 0 {
            return Err("no loadable segment".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod elf_tests {
    use super::elf;

    /// The test binary itself: a 64-bit ELF file for this machine (an executable, so
    /// its type is patched to a shared object where a test needs one to pass).
    fn own_bytes() -> Vec<u8> {
        let mut b = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        b[16] = 3; // ET_DYN
        b
    }

    #[test]
    fn whole_file_passes_and_every_cut_fails() {
        let b = own_bytes();
        elf::check(&b[..], b.len() as u64).unwrap();
        for cut in [0, 4, 63, 64, 200, 4096, b.len() / 2, b.len() - 1] {
            let part = &b[..cut];
            assert!(elf::check(part, cut as u64).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn class_machine_and_type_are_checked() {
        let mut b = own_bytes();
        b[4] = 1;
        assert!(elf::check(&b[..], b.len() as u64)
            .unwrap_err()
            .contains("64-bit"));
        let mut b = own_bytes();
        b[18] = 0x28; // EM_ARM
        b[19] = 0;
        assert!(elf::check(&b[..], b.len() as u64)
            .unwrap_err()
            .contains("machine 40"));
        let mut b = own_bytes();
        b[16] = 1; // ET_REL
        assert!(elf::check(&b[..], b.len() as u64)
            .unwrap_err()
            .contains("not a shared object"));
        // A program header table said to lie past the end.
        let mut b = own_bytes();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(elf::check(&b[..], b.len() as u64).is_err());
    }
}
