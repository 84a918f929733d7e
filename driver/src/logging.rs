//! The daemon's logs: `tracing` to stderr, filtered by `--log` (or `CILIUM_RS_LOG`) when given,
//! else by `RUST_LOG`, else at `info`; without timestamps when stderr is journald's (it stamps
//! every line itself); and a layer that keeps the last errors logged for `cilium-rs status`.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer, Registry};

use crate::health::{unix_ms, ErrorRing, LoggedError};

/// The filter when neither `--log` nor `RUST_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log filter {filter:?} (from {from}): {source}")]
    Filter {
        filter: String,
        from: &'static str,
        #[source]
        source: filter::ParseError,
    },
    #[error("install the log subscriber: {0}")]
    Init(String),
}

/// The filter to use and where it came from: `--log` wins over `RUST_LOG`, which wins over
/// [`DEFAULT_FILTER`]; an empty value counts as not given.
pub fn choose_filter(flag: Option<&str>, rust_log: Option<&str>) -> (String, &'static str) {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(flag) = given(flag) {
        return (flag, "--log");
    }
    if let Some(env) = given(rust_log) {
        return (env, "RUST_LOG");
    }
    (DEFAULT_FILTER.to_owned(), "the default")
}

/// Whether stderr is connected to journald: `JOURNAL_STREAM` (`<device>:<inode>`, set by
/// systemd) names the file stderr is. A child that inherited the variable but writes elsewhere
/// keeps its timestamps.
pub fn is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else { return false };
    match (dev.parse::<u64>(), ino.parse::<u64>(), stderr) {
        (Ok(dev), Ok(ino), Some(actual)) => (dev, ino) == actual,
        _ => false,
    }
}

/// Device and inode of stderr.
fn stderr_identity() -> Option<(u64, u64)> {
    let stat = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// Installs the daemon's subscriber: formatted lines on stderr, and `errors` fed with what is
/// logged at warn (with an `error` field) or error, whatever the filter.
pub fn init(flag: Option<&str>, errors: ErrorRing) -> Result<(), LoggingError> {
    let (text, from) = choose_filter(flag, std::env::var("RUST_LOG").ok().as_deref());
    let filter =
        EnvFilter::try_new(&text).map_err(|source| LoggingError::Filter { filter: text.clone(), from, source })?;
    let journal = is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_identity());
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        // Colours for a terminal only, not for journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let lines: Box<dyn Layer<Registry> + Send + Sync> =
        if journal { Box::new(lines.without_time()) } else { Box::new(lines) };
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(ErrorLayer::filtered(errors))
        .try_init()
        .map_err(|e| LoggingError::Init(e.to_string()))?;
    tracing::debug!(filter = %text, from, journal, "logging");
    Ok(())
}

/// Keeps what is logged at error, and at warn with an `error` field (the errors the daemon logs
/// once, at its boundaries), with the spans it happened in.
#[derive(Debug)]
pub struct ErrorLayer {
    ring: ErrorRing,
}

impl ErrorLayer {
    /// The layer with its own filter: spans down to info (for the context), events at warn
    /// and error.
    pub fn filtered<S>(ring: ErrorRing) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        ErrorLayer { ring }.with_filter(filter::filter_fn(|meta| {
            if meta.is_span() {
                *meta.level() <= Level::INFO
            } else {
                *meta.level() <= Level::WARN
            }
        }))
    }
}

/// The fields of a span, as `key=value key=value`.
struct SpanFields(String);

#[derive(Default)]
struct Fields {
    message: String,
    error: Option<String>,
    others: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "error" => self.error = Some(value),
            name => {
                if !self.others.is_empty() {
                    self.others.push(' ');
                }
                let _ = write!(self.others, "{name}={value}");
            }
        }
    }

    /// `message: key=value … error=…`.
    fn text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.others.is_empty() {
            parts.push(self.others.clone());
        }
        if let Some(error) = &self.error {
            parts.push(format!("error={error}"));
        }
        match (self.message.is_empty(), parts.is_empty()) {
            (_, true) => self.message.clone(),
            (true, false) => parts.join(" "),
            (false, false) => format!("{}: {}", self.message, parts.join(" ")),
        }
    }
}

impl<S> Layer<S> for ErrorLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.others));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(text)) = extensions.get_mut::<SpanFields>() {
            if !text.is_empty() && !fields.others.is_empty() {
                text.push(' ');
            }
            text.push_str(&fields.others);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if level != Level::ERROR && fields.error.is_none() {
            return;
        }
        let mut context = String::new();
        for span in ctx.event_scope(event).into_iter().flat_map(|scope| scope.from_root()) {
            if !context.is_empty() {
                context.push(' ');
            }
            context.push_str(span.name());
            if let Some(SpanFields(text)) = span.extensions().get::<SpanFields>().filter(|f| !f.0.is_empty()) {
                let _ = write!(context, "{{{text}}}");
            }
        }
        self.ring.push(LoggedError { at: unix_ms(), level: level.to_string(), message: fields.text(), context });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        assert_eq!(choose_filter(Some("debug"), Some("warn")), ("debug".to_owned(), "--log"));
        assert_eq!(choose_filter(None, Some("cilium_rs=trace")), ("cilium_rs=trace".to_owned(), "RUST_LOG"));
        assert_eq!(choose_filter(Some(" "), Some("")), ("info".to_owned(), "the default"));
        assert_eq!(choose_filter(None, None).0, DEFAULT_FILTER);
    }

    #[test]
    fn journald_is_recognised_by_the_stream_it_names() {
        assert!(is_journal(Some("8:1234"), Some((8, 1234))));
        assert!(!is_journal(Some("8:1234"), Some((8, 99))), "stderr was redirected elsewhere");
        assert!(!is_journal(None, Some((8, 1234))));
        assert!(!is_journal(Some("garbage"), Some((8, 1234))));
        assert!(!is_journal(Some("8:1234"), None));
    }

    #[test]
    fn errors_at_the_boundaries_are_kept_with_their_spans() {
        let ring = ErrorRing::default();
        let subscriber = tracing_subscriber::registry().with(ErrorLayer::filtered(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("plugin", method = "NetworkDriver.Join", endpoint = tracing::field::Empty);
            let _entered = span.enter();
            span.record("endpoint", "0123456789ab");
            tracing::warn!(status = 500, error = "create veth lxc0123: file exists", "failed");
            tracing::warn!("dockerd no longer knows this endpoint: removing it");
            tracing::info!(error = "not kept: info", "fine");
            tracing::debug!("nothing");
        });
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(ErrorLayer::filtered(ring.clone())),
            || {
                tracing::error!("cannot install signal handlers");
            },
        );
        let (kept, total) = ring.recent();
        assert_eq!(total, 2, "{kept:?}");
        assert_eq!(kept[0].level, "WARN");
        assert_eq!(kept[0].message, "failed: status=500 error=create veth lxc0123: file exists");
        assert_eq!(kept[0].context, "plugin{method=NetworkDriver.Join endpoint=0123456789ab}");
        assert_eq!((kept[1].level.as_str(), kept[1].message.as_str()), ("ERROR", "cannot install signal handlers"));
        assert!(kept[1].context.is_empty());
    }
}
