//! The OCI runtime spec (`config.json`) of one run, with Docker's defaults for
//! capabilities, masked and read-only paths, and devices.

use serde_json::{json, Value};

use super::rootless::Rootless;
use super::{ExecSpec, Network};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths Docker hides from containers.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The mount points the spec itself creates, besides the step's own mounts; the
/// caller records which did not exist in the base so they can be removed afterwards.
pub const SYSTEM_TARGETS: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/etc/hosts",
    "/etc/resolv.conf",
];

/// One mount in spec form.
pub struct SpecMount {
    /// Inside path.
    pub destination: String,
    /// `bind`, `tmpfs`, …
    pub kind: &'static str,
    /// Host path, or the file system name.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

impl SpecMount {
    /// A bind mount of a host path.
    pub fn bind(source: &std::path::Path, destination: &str, readonly: bool) -> Self {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        options.push(if readonly { "ro" } else { "rw" }.into());
        SpecMount {
            destination: destination.to_string(),
            kind: "bind",
            source: source.to_string_lossy().into_owned(),
            options,
        }
    }

    /// A fresh tmpfs.
    pub fn tmpfs(destination: &str) -> Self {
        SpecMount {
            destination: destination.to_string(),
            kind: "tmpfs",
            source: "tmpfs".into(),
            options: vec![
                "nosuid".into(),
                "nodev".into(),
                "mode=1777".into(),
                "size=65536k".into(),
            ],
        }
    }
}

/// The `config.json` value for `spec`, with `rootfs` relative to the bundle and the
/// step's mounts already turned into [`SpecMount`]s (after the system ones).
///
/// `rootless`: the run goes through a user namespace mapping container 0:0 to the
/// caller; there is then no cgroup section, `/sys` is the host's bound read-only (a
/// user namespace cannot mount sysfs without owning a network namespace), and
/// `/dev/pts` has no `gid=5` (unmapped). The runtime binds the default devices.
pub fn config(
    spec: &ExecSpec,
    hostname: &str,
    mounts: &[SpecMount],
    rootless: Option<Rootless>,
) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let devpts = if rootless.is_some() {
        json!([
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620"
        ])
    } else {
        json!([
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5"
        ])
    };
    let sys = if rootless.is_some() {
        json!({"destination": "/sys", "type": "bind", "source": "/sys",
               "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    } else {
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]})
    };
    let mut all_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": devpts}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        sys,
    ];
    for m in mounts {
        all_mounts.push(json!({
            "destination": m.destination,
            "type": m.kind,
            "source": m.source,
            "options": m.options,
        }));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if spec.network == Network::None {
        namespaces.push(json!({"type": "network"}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": MASKED,
        "readonlyPaths": READONLY,
    });
    let additional_gids = match rootless {
        Some(r) => {
            linux["namespaces"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"type": "user"}));
            linux["uidMappings"] = json!([{"containerID": 0, "hostID": r.uid, "size": 1}]);
            linux["gidMappings"] = json!([{"containerID": 0, "hostID": r.gid, "size": 1}]);
            // Only gid 0 is mapped, and setgroups is denied in the namespace.
            Vec::new()
        }
        None => {
            linux["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
            spec.user.additional_gids.clone()
        }
    };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": spec.user.uid,
                "gid": spec.user.gid,
                "additionalGids": additional_gids,
            },
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": all_mounts,
        "linux": linux,
    })
}
