//! Tenants: the config file that declares them, and the checked [`TenantSpec`] each one runs with.
//!
//! Every key is documented in the README with its unit and default. Unknown keys are rejected, and
//! so are conflicting settings, naming both.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::filter::{CollectionPattern, Filter, EVENT_KINDS};
use super::policy::{ErrorPolicy, QuarantinePolicy};
use crate::formatter::{FormatterLimits, FormatterSource};

/// One tenant, checked and ready to run.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub name: String,
    pub formatter: FormatterSource,
    pub topic: String,
    pub options: Vec<(String, String)>,
    pub filter: Filter,
    pub limits: FormatterLimits,
    pub on_error: ErrorPolicy,
    pub quarantine: Option<QuarantinePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "tenant", default)]
    tenants: Vec<TenantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    formatter: String,
    topic: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    filter: FilterEntry,
    #[serde(default)]
    limits: LimitsEntry,
    #[serde(default = "default_on_error")]
    on_error: String,
    dead_letter_topic: Option<String>,
    #[serde(default = "default_quarantine_after_failures")]
    quarantine_after_failures: u32,
    #[serde(default = "default_quarantine_secs")]
    quarantine_secs: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterEntry {
    #[serde(default)]
    collections: Vec<String>,
    #[serde(default)]
    dids: Vec<String>,
    #[serde(default)]
    kinds: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsEntry {
    timeout_ms: Option<u64>,
    memory_mib: Option<u64>,
    max_messages_per_event: Option<usize>,
    max_message_bytes: Option<usize>,
    recycle_after_calls: Option<u64>,
    recycle_memory_percent: Option<u8>,
}

fn default_on_error() -> String {
    "skip".to_owned()
}

/// Consecutive failures after which a tenant is quarantined.
pub const DEFAULT_QUARANTINE_AFTER_FAILURES: u32 = 100;
/// How long a quarantine lasts, in seconds.
pub const DEFAULT_QUARANTINE_SECS: u64 = 60;

fn default_quarantine_after_failures() -> u32 {
    DEFAULT_QUARANTINE_AFTER_FAILURES
}

fn default_quarantine_secs() -> u64 {
    DEFAULT_QUARANTINE_SECS
}

/// Reads and checks a tenant config file.
pub fn load(path: &Path) -> Result<Vec<TenantSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse(&text).map_err(|error| format!("{}: {error}", path.display()))
}

/// Parses and checks the text of a tenant config file.
pub fn parse(text: &str) -> Result<Vec<TenantSpec>, String> {
    let file: ConfigFile = toml::from_str(text).map_err(|error| error.to_string())?;
    if file.tenants.is_empty() {
        return Err("no [[tenant]] declared".to_owned());
    }
    let mut names = std::collections::HashSet::new();
    let mut specs = Vec::new();
    for entry in file.tenants {
        if !names.insert(entry.name.clone()) {
            return Err(format!("tenant `{}` is declared twice", entry.name));
        }
        let name = entry.name.clone();
        specs.push(check(entry).map_err(|error| format!("tenant `{name}`: {error}"))?);
    }
    Ok(specs)
}

fn check(entry: TenantEntry) -> Result<TenantSpec, String> {
    if entry.name.is_empty() || !entry.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("name must be non-empty and use only letters, digits, `-` and `_`".to_owned());
    }
    if entry.topic.trim().is_empty() {
        return Err("topic is empty".to_owned());
    }
    let formatter = FormatterSource::parse(&entry.formatter).map_err(|error| format!("formatter: {error}"))?;

    let on_error = match (entry.on_error.as_str(), entry.dead_letter_topic) {
        ("dead-letter", Some(topic)) if !topic.trim().is_empty() => ErrorPolicy::DeadLetter { topic },
        ("dead-letter", _) => return Err("on_error = \"dead-letter\" needs dead_letter_topic".to_owned()),
        (policy, Some(_)) => {
            return Err(format!("dead_letter_topic conflicts with on_error = \"{policy}\": use on_error = \"dead-letter\""))
        }
        ("skip", None) => ErrorPolicy::Skip,
        ("halt", None) => ErrorPolicy::Halt,
        (other, None) => return Err(format!("on_error = \"{other}\" is not one of skip, dead-letter, halt")),
    };
    let quarantine = match entry.quarantine_after_failures {
        0 => None,
        after_failures => {
            if entry.quarantine_secs == 0 {
                return Err("quarantine_secs must be at least 1 (set quarantine_after_failures = 0 to disable)".to_owned());
            }
            Some(QuarantinePolicy { after_failures, duration: Duration::from_secs(entry.quarantine_secs) })
        }
    };

    for kind in &entry.filter.kinds {
        if !EVENT_KINDS.contains(&kind.as_str()) {
            return Err(format!("filter.kinds: `{kind}` is not one of {}", EVENT_KINDS.join(", ")));
        }
    }
    let filter = Filter {
        collections: entry
            .filter
            .collections
            .iter()
            .map(|pattern| CollectionPattern::parse(pattern))
            .collect::<Result<_, _>>()
            .map_err(|error| format!("filter.collections: {error}"))?,
        dids: entry.filter.dids,
        kinds: entry.filter.kinds,
    };

    let defaults = FormatterLimits::default();
    let limits = FormatterLimits {
        timeout: Duration::from_millis(positive(entry.limits.timeout_ms, defaults.timeout.as_millis() as u64, "limits.timeout_ms")?),
        max_memory_bytes: (positive(entry.limits.memory_mib, (defaults.max_memory_bytes >> 20) as u64, "limits.memory_mib")? as usize)
            << 20,
        output_cap_bytes: defaults.output_cap_bytes,
        max_messages_per_event: positive(
            entry.limits.max_messages_per_event.map(|value| value as u64),
            defaults.max_messages_per_event as u64,
            "limits.max_messages_per_event",
        )? as usize,
        max_message_bytes: positive(
            entry.limits.max_message_bytes.map(|value| value as u64),
            defaults.max_message_bytes as u64,
            "limits.max_message_bytes",
        )? as usize,
        recycle_after_calls: entry.limits.recycle_after_calls.unwrap_or(defaults.recycle_after_calls),
        recycle_memory_percent: match entry.limits.recycle_memory_percent {
            Some(percent @ 1..=100) => percent,
            Some(other) => return Err(format!("limits.recycle_memory_percent = {other} is not within 1 to 100")),
            None => defaults.recycle_memory_percent,
        },
    };
    if limits.timeout > Duration::from_secs(60) {
        return Err("limits.timeout_ms is above 60000".to_owned());
    }

    Ok(TenantSpec {
        name: entry.name,
        formatter,
        topic: entry.topic,
        options: entry.options.into_iter().collect(),
        filter,
        limits,
        on_error,
        quarantine,
    })
}

fn positive(value: Option<u64>, default: u64, key: &str) -> Result<u64, String> {
    match value {
        Some(0) => Err(format!("{key} must be at least 1")),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tenant_parses() {
        let specs = parse(
            r#"
            [[tenant]]
            name = "moderation"
            formatter = "osprey"
            topic = "osprey-events"
            on_error = "dead-letter"
            dead_letter_topic = "osprey-dead"
            quarantine_after_failures = 5
            quarantine_secs = 30
            options = { mode = "fast" }
            filter = { collections = ["app.bsky.*"], kinds = ["operation"] }
            limits = { timeout_ms = 50, memory_mib = 64, recycle_after_calls = 1000 }

            [[tenant]]
            name = "archive"
            formatter = "standard"
            topic = "everything"
            "#,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].on_error, ErrorPolicy::DeadLetter { topic: "osprey-dead".to_owned() });
        assert_eq!(specs[0].limits.max_memory_bytes, 64 << 20);
        assert_eq!(specs[0].options, vec![("mode".to_owned(), "fast".to_owned())]);
        assert_eq!(specs[1].on_error, ErrorPolicy::Skip);
        assert_eq!(specs[1].quarantine.unwrap().after_failures, DEFAULT_QUARANTINE_AFTER_FAILURES);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = parse("[[tenant]]\nname = \"a\"\nformatter = \"standard\"\ntopic = \"t\"\ncolour = 1\n").unwrap_err();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn dead_letter_topic_without_dead_letter_policy_conflicts() {
        let error = parse(
            "[[tenant]]\nname = \"a\"\nformatter = \"standard\"\ntopic = \"t\"\non_error = \"skip\"\ndead_letter_topic = \"d\"\n",
        )
        .unwrap_err();
        assert!(error.contains("dead_letter_topic") && error.contains("on_error"), "{error}");
    }

    #[test]
    fn duplicate_tenant_names_are_rejected() {
        let tenant = "[[tenant]]\nname = \"a\"\nformatter = \"standard\"\ntopic = \"t\"\n";
        assert!(parse(&format!("{tenant}{tenant}")).unwrap_err().contains("twice"));
    }
}
