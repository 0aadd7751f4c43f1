//! `kiln-http-serve FILE [PORT]`: serves FILE at `/file` (with an ETag, ranges and
//! revalidation) from the loopback test server until killed; prints the URL on
//! stdout. Used by `bench/http.sh`.

use std::io::Write;

use kiln_tests::http_server::{Body, HttpServer, Route};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: kiln-http-serve FILE [PORT]");
        std::process::exit(2);
    };
    let port = args.next().unwrap_or_else(|| "0".into());
    let meta = std::fs::metadata(&file).unwrap_or_else(|e| {
        eprintln!("kiln-http-serve: {file}: {e}");
        std::process::exit(2)
    });
    let srv = HttpServer::start_on(&format!("127.0.0.1:{port}"));
    let mtime = meta
        .modified()
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        })
        .unwrap_or(0);
    srv.route(
        "/file",
        Route {
            body: Body::File(file.into()),
            etag: Some(format!("\"{}-{mtime}\"", meta.len())),
            ranges: true,
            honour_if_none_match: true,
            ..Route::default()
        },
    );
    println!("{}", srv.url("/file"));
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}
