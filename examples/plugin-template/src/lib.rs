//! `hello://NAME`: a kiln source plugin to copy from.
//!
//! It writes `NAME.txt` holding the configured greeting, `hello.times` times, plus
//! the lines of `hello.extra`, with mode `hello.mode`. Everything a real plugin
//! needs is here: an identifier parsed without I/O, typed attributes with a declared
//! schema, a config table, a cache key with everything that changes the content in
//! it (and nothing secret), a pin, progress, cancellation, and unit tests that run
//! `cache_key` and `snapshot` through the plugin-api's test doubles.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_plugin_api::{
    export_plugin, parse_config, AttrSpec, AttrType, CacheKey, Capabilities, Host, Job, Plugin,
    PluginError, PluginInfo, Request, Result, Snapshot, Source, SourceInstance,
};
use sha2::{Digest, Sha256};

const TIMES: &str = "hello.times";
const MODE: &str = "hello.mode";
const EXTRA: &str = "hello.extra";

/// The plugin's `config` table in `kiln.toml`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "Hello".into()
}

/// The source: one value for the whole process.
pub struct Hello {
    greeting: String,
}

/// A parsed `hello://NAME` with its attributes; its `Display` is the canonical form.
pub struct HelloId {
    name: String,
    times: u64,
    mode: u32,
    extra: Vec<String>,
}

impl fmt::Display for HelloId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hello://{}", self.name)
    }
}

impl Source for Hello {
    type Identifier = HelloId;

    fn identifier(&self, req: &Request) -> Result<HelloId> {
        let name = req.reference.as_str();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PluginError::invalid_identifier(format!(
                "hello://{name}: expected hello://NAME (letters, digits and '-')"
            )));
        }
        // The host checks the declared schema first; these keep the plugin strict
        // anyway and turn the strings into values.
        req.deny_unknown("hello.", &[TIMES, MODE, EXTRA])?;
        let times = req.attr_u64(TIMES)?.unwrap_or(1);
        if times > 1000 {
            return Err(PluginError::invalid_identifier(format!(
                "hello://{name}: attribute {TIMES}: at most 1000, got {times}"
            )));
        }
        Ok(HelloId {
            name: name.to_string(),
            times,
            mode: req.attr_octal(MODE)?.unwrap_or(0o644),
            extra: req.attr_list(EXTRA)?.unwrap_or_default(),
        })
    }

    fn resolve(&self, id: HelloId) -> Result<Box<dyn SourceInstance>> {
        let mut text = String::new();
        for _ in 0..id.times {
            text.push_str(&format!("{}, {}!\n", self.greeting, id.name));
        }
        for line in &id.extra {
            text.push_str(line);
            text.push('\n');
        }
        Ok(Box::new(HelloStep { id, text }))
    }
}

/// One step: the content is known up front, so the key is its digest.
struct HelloStep {
    id: HelloId,
    text: String,
}

impl HelloStep {
    fn digest(&self) -> String {
        format!("sha256:{:x}", Sha256::digest(self.text.as_bytes()))
    }
}

impl SourceInstance for HelloStep {
    fn cache_key(&self, _index: u32, job: &Job<'_>) -> Result<CacheKey> {
        job.check_cancelled()?;
        // Everything that changes the tree: the content (greeting, times, extra lines)
        // and the file's name and mode. The host adds this plugin's id itself.
        Ok(CacheKey {
            key: format!(
                "hello:{}:{}:{:o}",
                self.id.name,
                self.digest(),
                self.id.mode
            ),
            pin: self.digest(),
            done: true,
            opts: vec![],
        })
    }

    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot> {
        let task = format!("writing {}.txt", self.id.name);
        let total = self.text.len() as u64;
        job.progress_start(&task, total);
        job.check_cancelled()?;
        let file = dest.join(format!("{}.txt", self.id.name));
        std::fs::write(&file, &self.text)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(self.id.mode))?;
        job.progress_finish_of(&task, total, total, None);
        Ok(Snapshot {
            metadata: vec![("hello.digest".into(), self.digest())],
        })
    }
}

impl Plugin for Hello {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "com.example.source.v1.hello",
            version: env!("CARGO_PKG_VERSION"),
            schemes: &["hello"],
            capabilities: Capabilities::default(),
            max_concurrency: 0,
        }
    }

    fn attributes() -> Vec<AttrSpec> {
        vec![
            AttrSpec::new(TIMES, AttrType::U64, "how many greeting lines (default 1)"),
            AttrSpec::new(MODE, AttrType::Octal, "the file's mode (default 0644)"),
            AttrSpec::new(EXTRA, AttrType::List, "more lines to append"),
        ]
    }

    fn new(config: &str, _host: Host) -> Result<Self> {
        let c: Config = parse_config(config)?;
        Ok(Hello {
            greeting: c.greeting,
        })
    }
}

export_plugin!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::testing::{FakeHost, FakeJob};
    use kiln_plugin_api::ErrorCode;

    fn step(config: &str, req: Request) -> Box<dyn SourceInstance> {
        let host = FakeHost::new();
        let hello = Hello::new(config, host.host()).unwrap();
        hello.resolve(hello.identifier(&req).unwrap()).unwrap()
    }

    #[test]
    fn snapshot_writes_the_file_and_reports_progress() {
        let host = FakeHost::new();
        let job = FakeJob::new();
        let s = step(
            "greeting = \"Hi\"\n",
            Request::new("hello://you")
                .with_attr(TIMES, "2")
                .with_attr(MODE, "0600")
                .with_attr(EXTRA, r#"["bye"]"#),
        );
        let dest = host.staging_dir();
        s.snapshot(&dest, &job.job()).unwrap();
        let file = dest.join("you.txt");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "Hi, you!\nHi, you!\nbye\n"
        );
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let p = job.progress();
        assert_eq!(p.last().unwrap().kind, "finish");
        assert_eq!(p.last().unwrap().current, 22);
    }

    #[test]
    fn the_key_changes_with_the_content_and_the_mode() {
        let job = FakeJob::new();
        let key = |cfg: &str, req: Request| step(cfg, req).cache_key(0, &job.job()).unwrap();
        let base = key("", Request::new("hello://a"));
        assert!(base.done && base.pin.starts_with("sha256:"));
        assert_ne!(base, key("greeting = \"Yo\"", Request::new("hello://a")));
        assert_ne!(
            base,
            key("", Request::new("hello://a").with_attr(MODE, "0600"))
        );
        assert_eq!(base, key("", Request::new("hello://a")));
    }

    #[test]
    fn bad_input_is_refused_with_the_attribute_named() {
        let hello = Hello::new("", FakeHost::new().host()).unwrap();
        for (k, v) in [
            (TIMES, "many"),
            (MODE, "rwx"),
            (EXTRA, "a,b"),
            ("hello.typo", "1"),
        ] {
            let err = hello
                .identifier(&Request::new("hello://a").with_attr(k, v))
                .err()
                .expect("refused");
            assert_eq!(err.code, ErrorCode::INVALID_IDENTIFIER);
            assert!(err.message.contains(k), "{err}");
        }
        let e = Hello::new("greting = \"x\"", FakeHost::new().host())
            .err()
            .unwrap();
        assert_eq!(
            kiln_plugin_api::config_error_key(&e.message).unwrap().0,
            "greting"
        );
    }

    #[test]
    fn a_cancelled_job_stops() {
        let job = FakeJob::new();
        job.cancel();
        let e = step("", Request::new("hello://a"))
            .cache_key(0, &job.job())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::CANCELLED);
    }
}
