//! Exporter tests: real trees, real archives, and the real `skopeo` and `umoci`.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::*;

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("app/bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("app/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("app/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("etc/config"), "key=value\n").unwrap();
    fs::set_permissions(root.join("etc/config"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(root.join("etc/config"), root.join("etc/config.link")).unwrap();
    symlink("/app/bin/tool", root.join("tool")).unwrap();
    let long = "d".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("f".repeat(120)), "long name").unwrap();
    fs::write(root.join("empty"), "").unwrap();
}

/// (relative path, kind, mode, content or link target) of everything in a tree.
fn describe_tree(root: &Path) -> Vec<(String, &'static str, u32, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, &'static str, u32, Vec<u8>)>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.is_dir() {
                out.push((rel, "dir", mode, vec![]));
                walk(root, &p, out);
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.push((rel, "link", 0, t.as_os_str().as_encoded_bytes().to_vec()));
            } else {
                out.push((rel, "file", mode, fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn need(tool: &str) {
    if Command::new(tool).arg("--version").output().is_err() {
        panic!("this test needs `{tool}`: apt-get install skopeo umoci");
    }
}

#[test]
fn output_specs_parse_and_reject() {
    assert_eq!(
        "type=local,dest=out".parse::<OutputSpec>().unwrap(),
        OutputSpec::Local { dest: "out".into() }
    );
    assert_eq!(
        "type=tar,dest=-".parse::<OutputSpec>().unwrap(),
        OutputSpec::Tar {
            dest: TarDest::Stdout
        }
    );
    assert_eq!(
        "type=oci,dest=img.tar,name=example.com/app:1"
            .parse::<OutputSpec>()
            .unwrap(),
        OutputSpec::Oci {
            dest: "img.tar".into(),
            name: Some("example.com/app:1".into())
        }
    );
    assert_eq!(
        "dir".parse::<OutputSpec>().unwrap(),
        OutputSpec::Local { dest: "dir".into() }
    );
    for (bad, why) in [
        ("type=zip,dest=x", "unknown type \"zip\""),
        ("type=local", "type=local needs dest="),
        ("type=local,dest=x,color=red", "unknown key \"color\""),
        (
            "type=tar,dest=x,name=a",
            "name= is only valid with type=oci",
        ),
        ("dest=x", "missing type="),
        ("type=oci,dest=x,name=a b", "contains spaces"),
        ("type=local,dest=a,dest=b", "dest given twice"),
    ] {
        let err = bad.parse::<OutputSpec>().unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(
            err.starts_with(&format!("invalid --output {bad:?}")),
            "{err}"
        );
    }
}

#[test]
fn local_export_copies_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    sample_tree(&tree);
    let dest = t.path().join("out/nested");
    let r = export(
        &tree,
        &OutputSpec::Local { dest: dest.clone() },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.digest, None);
    assert_eq!(describe_tree(&dest), describe_tree(&tree));
    let a = fs::metadata(dest.join("etc/config")).unwrap();
    assert_eq!(
        a.ino(),
        fs::metadata(dest.join("etc/config.link")).unwrap().ino()
    );
}

#[test]
fn tar_export_is_deterministic_and_complete() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    sample_tree(&tree);
    let f1 = t.path().join("a.tar");
    let f2 = t.path().join("b.tar");
    let d1 = export(
        &tree,
        &OutputSpec::Tar {
            dest: TarDest::File(f1.clone()),
        },
        &Default::default(),
    )
    .unwrap();
    // A copy of the tree (new inodes, same metadata) gives the same bytes.
    let copy = t.path().join("copy");
    fs::create_dir(&copy).unwrap();
    crate::worker::copy_tree(&tree, &copy, None).unwrap();
    let d2 = export(
        &copy,
        &OutputSpec::Tar {
            dest: TarDest::File(f2.clone()),
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(d1, d2);
    assert_eq!(fs::read(&f1).unwrap(), fs::read(&f2).unwrap());
    let bytes = fs::read(&f1).unwrap();
    assert_eq!(
        d1.digest.unwrap(),
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        )
    );
    // The system tar reads it back to the same tree.
    let x = t.path().join("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xpf")
        .arg(&f1)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(describe_tree(&x), describe_tree(&tree));
    assert_eq!(
        fs::metadata(x.join("etc/config")).unwrap().ino(),
        fs::metadata(x.join("etc/config.link")).unwrap().ino()
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn oci_archive_is_read_by_skopeo_and_umoci() {
    need("skopeo");
    need("umoci");
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    sample_tree(&tree);
    let base_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
            "Cmd": ["/app/bin/tool"],
            "Entrypoint": ["/bin/sh", "-c"],
            "WorkingDir": "/app",
        },
        "rootfs": { "type": "layers", "diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"] },
        "history": [{ "created_by": "base layer" }],
    });
    // A base whose blobs are not at hand (pruned): the result is squashed into one
    // layer, and the base's runtime config still carries over.
    let base = BaseImage {
        reference: "example.com/base:1".into(),
        config: serde_json::to_vec(&base_config).unwrap(),
        layers: vec![BaseLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 10,
            blob: None,
        }],
        rootfs: Some(tree.clone()),
    };
    let archive = t.path().join("img.tar");
    let spec: OutputSpec = format!(
        "type=oci,dest={},name=example.com/team/app:v1",
        archive.display()
    )
    .parse()
    .unwrap();
    let opts = ExportOptions {
        platform: Some("linux/amd64"),
        base: Some(&base),
        cancel: None,
    };
    let r = export(&tree, &spec, &opts).unwrap();
    let digest = r.digest.unwrap();

    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], digest);
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["Env"],
        serde_json::json!(["PATH=/usr/bin:/bin", "GREETING=hello"])
    );
    let config = run(Command::new("skopeo")
        .arg("inspect")
        .arg("--config")
        .arg(format!("oci-archive:{}", archive.display())));
    let c: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["/app/bin/tool"]));
    assert_eq!(
        c["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c"])
    );
    assert_eq!(c["config"]["WorkingDir"], "/app");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    // umoci reads layouts from a folder: unpack the archive, then the image by its tag.
    let layout = t.path().join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--rootless")
        .arg("--image")
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    let local = t.path().join("local");
    export(
        &tree,
        &OutputSpec::Local {
            dest: local.clone(),
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(describe_tree(&bundle.join("rootfs")), describe_tree(&local));
    // The runtime config made it into the bundle.
    let rt: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(rt["process"]["cwd"], "/app");
    assert_eq!(
        rt["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "/app/bin/tool"])
    );

    // The same tree exports to the same manifest digest.
    let again = t.path().join("again.tar");
    let spec2: OutputSpec = format!(
        "type=oci,dest={},name=example.com/team/app:v1",
        again.display()
    )
    .parse()
    .unwrap();
    assert_eq!(
        export(&tree, &spec2, &opts).unwrap().digest.unwrap(),
        digest
    );
}

#[test]
fn oci_without_base_uses_the_platform_given() {
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("hello"), "world").unwrap();
    let archive = t.path().join("sub/dir/img.tar");
    let spec = OutputSpec::Oci {
        dest: archive.clone(),
        name: None,
    };
    let opts = ExportOptions {
        platform: Some("linux/arm64/v8"),
        ..Default::default()
    };
    let d = export(&tree, &spec, &opts).unwrap().digest.unwrap();
    let v: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))))
    .unwrap();
    assert_eq!(v["Digest"], d);
    assert_eq!(v["Architecture"], "arm64");
    let not_json = BaseImage {
        config: b"not json".to_vec(),
        ..Default::default()
    };
    let bad = ExportOptions {
        base: Some(&not_json),
        ..Default::default()
    };
    let err = export(&tree, &spec, &bad).unwrap_err().to_string();
    assert!(err.starts_with("export: base image config:"), "{err}");
}

#[test]
fn tar_export_carries_extended_attributes_through_unpack() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("ping"), "binary").unwrap();
    let name = std::ffi::CString::new("user.kiln.cap").unwrap();
    crate::worker::xattr::set(&tree.join("ping"), &name, b"\x01\x02").unwrap();
    if crate::worker::xattr::list(&tree.join("ping"))
        .unwrap()
        .is_empty()
    {
        eprintln!("the temp filesystem holds no user xattrs; nothing to check");
        return;
    }
    let archive = t.path().join("t.tar");
    export(
        &tree,
        &OutputSpec::Tar {
            dest: TarDest::File(archive.clone()),
        },
        &Default::default(),
    )
    .unwrap();
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    crate::worker::unpack(
        &archive,
        "/t.tar",
        crate::worker::Compression::None,
        &out,
        None,
    )
    .unwrap();
    assert_eq!(fs::read(out.join("ping")).unwrap(), b"binary");
    assert_eq!(
        crate::worker::xattr::list(&out.join("ping")).unwrap(),
        vec![(name, b"\x01\x02".to_vec())]
    );
}

/// Times the tar exporter against `tar -cf` on many small files (run with `--ignored`).
#[test]
#[ignore = "timing; run by hand"]
fn tar_speed_against_tar() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..100 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f}")), vec![b'x'; 4096]).unwrap();
        }
    }
    let start = std::time::Instant::now();
    export(
        &src,
        &OutputSpec::Tar {
            dest: TarDest::File(t.path().join("a.tar")),
        },
        &Default::default(),
    )
    .unwrap();
    let ours = start.elapsed();
    let start = std::time::Instant::now();
    run(Command::new("tar")
        .arg("-cf")
        .arg(t.path().join("b.tar"))
        .arg("-C")
        .arg(&src)
        .arg("."));
    let tar = start.elapsed();
    eprintln!(
        "5000 files: tar export {ours:?}, tar -cf {tar:?}, ratio {:.2}",
        ours.as_secs_f64() / tar.as_secs_f64()
    );
}
