//! Forwards a plugin's `tracing` events to the host's subscriber.
//!
//! A plugin statically links its own copy of `tracing`, whose global dispatcher the
//! host's subscriber never sees. The SDK installs this forwarding subscriber as the
//! plugin copy's global default; it asks the host whether a level and target are
//! enabled (so the host's level filter applies) and sends each event as a
//! [`LogRecord`]. It also installs a panic hook that reports the panic's location to
//! the host at debug level instead of printing to stderr.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::abi::{LogLevel, LogRecord};
use crate::sdk::Host;

static HOST: RwLock<Option<(Host, &'static str)>> = RwLock::new(None);
static INSTALL: Once = Once::new();

/// Points the bridge at `host` and installs it on first use.
pub(crate) fn install(host: &Host, plugin_id: &'static str) {
    *HOST.write().unwrap_or_else(|e| e.into_inner()) = Some((host.clone(), plugin_id));
    INSTALL.call_once(|| {
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(Forwarder {
            next_span: AtomicU64::new(1),
        }));
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            send(
                LogLevel::DEBUG,
                "panic",
                format!("plugin panic{location}: {}", panic_message(info.payload())),
                "",
                0,
            );
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn level(l: &Level) -> LogLevel {
    match *l {
        Level::ERROR => LogLevel::ERROR,
        Level::WARN => LogLevel::WARN,
        Level::INFO => LogLevel::INFO,
        Level::DEBUG => LogLevel::DEBUG,
        Level::TRACE => LogLevel::TRACE,
    }
}

fn send(level: LogLevel, target: &str, message: String, file: &str, line: u32) {
    let guard = HOST.read().unwrap_or_else(|e| e.into_inner());
    if let Some((host, _)) = guard.as_ref() {
        host.abi().log(&LogRecord {
            level,
            target: target.into(),
            message: message.into(),
            file: file.into(),
            line,
        });
    }
}

struct Forwarder {
    next_span: AtomicU64,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The host's filter may change between calls: ask per event.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let guard = HOST.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some((host, _)) => host
                .abi()
                .log_enabled(level(metadata.level()), metadata.target().into()),
            None => false,
        }
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        send(
            level(meta.level()),
            meta.target(),
            fields.message + &fields.rest,
            meta.file().unwrap_or(""),
            meta.line().unwrap_or(0),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
