//! # kiln plugin-api
//!
//! The one crate a kiln source plugin depends on. It holds the ABI that crosses
//! between the `kiln` host and a plugin (module [`abi`], built on `abi_stable`), the
//! error value ([`PluginError`]), and the SDK a plugin author uses: the [`Source`],
//! [`SourceInstance`] and [`Plugin`] traits, the [`Host`] and [`Job`] services, and the
//! [`export_plugin!`] macro.
//!
//! ## Writing a plugin
//!
//! A plugin is a `cdylib` crate, built with `panic = "unwind"` (the default):
//!
//! ```toml
//! [package]
//! name = "kiln-source-hello"
//! [lib]
//! crate-type = ["cdylib"]
//! [dependencies]
//! kiln-plugin-api = "1"
//! ```
//!
//! It implements [`Source`] (parse identifiers, no I/O), [`SourceInstance`] (the cache
//! key and the content of one step) and [`Plugin`] (description and constructor), then
//! exports the type:
//!
//! ```no_run
//! use std::path::Path;
//! use kiln_plugin_api::{
//!     export_plugin, CacheKey, Capabilities, Host, Job, Plugin, PluginError, PluginInfo,
//!     Request, Result, Snapshot, Source, SourceInstance,
//! };
//!
//! pub struct Hello;
//!
//! impl Source for Hello {
//!     type Identifier = String;
//!     fn identifier(&self, req: &Request) -> Result<String> {
//!         if req.reference.is_empty() {
//!             return Err(PluginError::invalid_identifier("hello:// needs a name"));
//!         }
//!         Ok(format!("hello://{}", req.reference))
//!     }
//!     fn resolve(&self, id: String) -> Result<Box<dyn SourceInstance>> {
//!         Ok(Box::new(HelloStep(id)))
//!     }
//! }
//!
//! struct HelloStep(String);
//!
//! impl SourceInstance for HelloStep {
//!     fn cache_key(&self, _index: u32, _job: &Job<'_>) -> Result<CacheKey> {
//!         Ok(CacheKey { key: self.0.clone(), pin: self.0.clone(), done: true, opts: vec![] })
//!     }
//!     fn snapshot(&self, dest: &Path, _job: &Job<'_>) -> Result<Snapshot> {
//!         std::fs::write(dest.join("hello.txt"), &self.0)?;
//!         Ok(Snapshot::default())
//!     }
//! }
//!
//! impl Plugin for Hello {
//!     fn info() -> PluginInfo {
//!         PluginInfo {
//!             id: "com.example.source.v1.hello",
//!             version: env!("CARGO_PKG_VERSION"),
//!             schemes: &["hello"],
//!             capabilities: Capabilities::default(),
//!             max_concurrency: 0,
//!         }
//!     }
//!     fn new(_config: &str, _host: Host) -> Result<Self> {
//!         Ok(Hello)
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! Then name the built `.so` in `kiln.toml`:
//!
//! ```toml
//! [plugins."com.example.source.v1.hello"]
//! path = "/usr/lib/kiln/plugins/libkiln_source_hello.so"
//! sha256 = "…"   # optional pin of the file
//! [plugins."com.example.source.v1.hello".config]
//! greeting = "hi" # handed to Plugin::new as TOML text
//! ```
//!
//! ## What the SDK does for you
//!
//! - Every entry point runs under `catch_unwind`: a panic becomes a `panicked`
//!   [`PluginError`] instead of taking the host down; the host then stops calling the
//!   plugin and keeps running.
//! - `tracing` events of the plugin are forwarded to the host's subscriber, filtered by
//!   the host's level (see `log_bridge`). Use `tracing::info!` and friends as usual;
//!   never print to stdout.
//! - The host calls plugins only from a blocking thread pool, never from an async
//!   worker, so plain blocking I/O is right. Poll [`Job::check_cancelled`] at I/O
//!   boundaries.
//! - Secrets ([`Job::secret`]) and URL credentials must never appear in keys, pins,
//!   errors or log records.
//!
//! ## Keys, attributes, configuration, tests
//!
//! - What a key must and must not contain, what a pin is and what `opts` hold:
//!   [`CacheKey`]. The host mixes the plugin's id into its cache index, so keys of
//!   different plugins never collide.
//! - Typed attribute readers ([`Request::attr_u64`], [`Request::attr_bool`],
//!   [`Request::attr_octal`], [`Request::attr_list`], [`Request::deny_unknown`]) and the
//!   optional schema ([`Plugin::attributes`], [`attrs`]) the host checks before calling
//!   the plugin.
//! - [`parse_config`] and [`config_error`] name the config key at fault; the host
//!   reports it at that key's line and column in `kiln.toml`.
//! - The `testing` feature: `testing::FakeJob` and `FakeHost` run
//!   `cache_key` and `snapshot` in plain unit tests (see `examples/plugin-template`).
//!
//! ## Compatibility
//!
//! The plugin-api is versioned on its own ([`API_VERSION`]). The host loads a plugin
//! built for the same major version and a minor version not newer than its own.

#![warn(missing_docs)]

pub mod abi;
pub mod attrs;
mod error;
pub mod gojson;
mod log_bridge;
pub mod patterns;
pub mod platform;
mod sdk;
#[cfg(feature = "testing")]
pub mod testing;

pub use abi::Capabilities;
pub use attrs::{AttrSpec, AttrType};
pub use error::{ErrorCode, PluginError, Result};
pub use sdk::{
    config_error, config_error_key, guard, parse_config, BlobWriter, CacheKey, Host, Job, Plugin,
    PluginInfo, Request, Snapshot, Source, SourceInstance, DESCRIBE_ERROR, OCI_LAYOUT_PREFIX,
    SSH_PREFIX,
};

/// The version of this plugin-api, declared by every plugin built against it.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

#[doc(hidden)]
pub mod __private {
    pub use crate::sdk::{describe_impl, new_source_impl};
    pub use abi_stable;
}

/// Exports a [`Plugin`] type as the root module of this `cdylib`.
///
/// Use it once, at the crate root: `export_plugin!(MySource);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, api_version = $crate::API_VERSION);
    };
    // Hidden form: declare another plugin-api version (used by kiln's own tests to
    // build a plugin the host must refuse).
    ($plugin:ty, api_version = $api:expr) => {
        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static kiln_plugin_declaration: $crate::abi::PluginDeclaration =
            $crate::abi::PluginDeclaration::new($api);

        extern "C" fn __kiln_describe() -> $crate::abi::PluginDescriptor {
            $crate::__private::describe_impl::<$plugin>($api)
        }

        extern "C" fn __kiln_new_source(
            config: $crate::__private::abi_stable::std_types::RStr<'_>,
            host: $crate::abi::HostServicesBox,
        ) -> $crate::__private::abi_stable::std_types::RResult<
            $crate::abi::SourceBox,
            $crate::PluginError,
        > {
            $crate::__private::new_source_impl::<$plugin>(config, host)
        }

        fn __kiln_root_module() -> $crate::abi::SourcePluginRef {
            use $crate::__private::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::SourcePluginMod {
                describe: __kiln_describe,
                new_source: __kiln_new_source,
            }
            .leak_into_prefix()
        }

        // What `#[abi_stable::export_root_module]` expands to, written out so that a
        // plugin crate needs no direct dependency on abi_stable. The symbol name is
        // abi_stable's `ROOT_MODULE_LOADER_NAME` (checked by a plugin-api test).
        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            pub extern "C" fn _sabi_erased_module(
            ) -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    __kiln_root_module,
                )
            }
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::SourcePluginRef,
                >(
                    _sabi_erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn api_compatibility_rule() {
        use crate::abi::api_compatible;
        assert!(api_compatible("1.2.0", "1.0.5"));
        assert!(api_compatible("1.2.0", "1.2.9"));
        assert!(!api_compatible("1.2.0", "1.3.0"));
        assert!(!api_compatible("1.2.0", "2.0.0"));
        assert!(!api_compatible("1.2.0", "0.9.0"));
        assert!(!api_compatible("1.2.0", "garbage"));
    }

    #[test]
    fn declaration_round_trips() {
        let d = crate::abi::PluginDeclaration::new("1.0.0");
        assert_eq!(d.api_version(), "1.0.0");
    }
}
