//! `kiln-image-bench-push HOST REPO:TAG`: builds the benchmark image of `bench/image.sh`
//! (5 gzip layers, about 330 MB unpacked: incompressible binaries, text-like files, and
//! 1,000 small files that layer 3 removes with whiteouts) and pushes it to the registry
//! at HOST (plain HTTP) as REPO:TAG.

use kiln_tests::registry::image::{self, layer, Compression, Entry};
use kiln_tests::registry::Remote;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Text-like data (compresses about 4:3, as base64 does).
fn text(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut v: Vec<u8> = noise(len, seed)
        .into_iter()
        .map(|b| ALPHABET[(b & 63) as usize])
        .collect();
    for i in (76..v.len()).step_by(77) {
        v[i] = b'\n';
    }
    v
}

fn file(path: String, data: Vec<u8>) -> Entry {
    Entry::File(path, data, 0o644)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (host, target) = match args.as_slice() {
        [_, h, t] => (h.clone(), t.clone()),
        _ => {
            eprintln!("usage: kiln-image-bench-push HOST REPO:TAG");
            std::process::exit(2);
        }
    };
    let (repo, tag) = target.rsplit_once(':').expect("REPO:TAG");
    let mib = 1 << 20;
    let mut seed = 0u64;
    let mut next = || {
        seed += 1;
        seed
    };
    let mut layers = Vec::new();
    // 1: a base: 1,500 text files of 16 KiB, 40 MiB of binaries.
    let mut e = vec![
        Entry::Dir("usr".into()),
        Entry::Dir("usr/share".into()),
        Entry::Dir("usr/share/doc".into()),
        Entry::Dir("usr/bin".into()),
        Entry::Dir("etc".into()),
    ];
    for i in 0..1500 {
        e.push(file(format!("usr/share/doc/f{i}.txt"), text(16384, next())));
    }
    for i in 0..4 {
        e.push(Entry::File(
            format!("usr/bin/tool{i}"),
            noise(10 * mib, next()),
            0o755,
        ));
    }
    e.push(file("etc/os-release".into(), b"ID=kiln-bench\n".to_vec()));
    layers.push(layer(&e, Compression::Gzip));
    // 2: 60 MiB of libraries and 1,000 small files that layer 3 removes.
    let mut e = vec![
        Entry::Dir("usr/lib".into()),
        Entry::Dir("var".into()),
        Entry::Dir("var/cache".into()),
        Entry::Dir("var/cache/pkg".into()),
    ];
    for i in 0..3 {
        e.push(file(format!("usr/lib/lib{i}.so"), noise(20 * mib, next())));
    }
    for i in 0..1000 {
        e.push(file(
            format!("var/cache/pkg/e{i}"),
            format!("cache entry {i}\n").into_bytes(),
        ));
    }
    layers.push(layer(&e, Compression::Gzip));
    // 3: the cache removed (1,000 whiteouts), 60 MiB of data.
    let mut e: Vec<Entry> = (0..1000)
        .map(|i| Entry::Whiteout(format!("var/cache/pkg/e{i}")))
        .collect();
    e.push(Entry::Dir("opt".into()));
    e.push(Entry::Dir("opt/data".into()));
    for i in 0..3 {
        e.push(file(format!("opt/data/d{i}.bin"), noise(20 * mib, next())));
    }
    layers.push(layer(&e, Compression::Gzip));
    // 4: 70 MiB of text-like assets.
    let mut e = vec![Entry::Dir("srv".into()), Entry::Dir("srv/assets".into())];
    for i in 0..70 {
        e.push(file(format!("srv/assets/a{i}.js"), text(mib, next())));
    }
    layers.push(layer(&e, Compression::Gzip));
    // 5: a 60 MiB application and its config.
    let mut e = vec![Entry::Dir("app".into())];
    for i in 0..3 {
        e.push(Entry::File(
            format!("app/part{i}"),
            noise(20 * mib, next()),
            0o755,
        ));
    }
    e.push(file("app/config.toml".into(), b"port = 8080\n".to_vec()));
    layers.push(layer(&e, Compression::Gzip));

    let total: usize = layers.iter().map(|l| l.blob.len()).sum();
    let img = image::image(
        layers,
        &format!("linux/{}", host_arch()),
        &["PATH=/usr/bin"],
    );
    Remote::attach(&host).push_image(repo, tag, &img);
    eprintln!(
        "pushed {host}/{repo}:{tag}: 5 layers, {:.0} MB compressed",
        total as f64 / 1e6
    );
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
