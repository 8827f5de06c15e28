//! The layers of a configuration, merged into one TOML tree that remembers where
//! each value came from:
//!
//! 1. the file (`--config`), old `_ms` / `_secs` keys renamed to their duration keys;
//! 2. `BOTFLEET__SECTION__KEY` variables (`BOTFLEET__BOTS__0__APP_ID` reaches
//!    `bots[0].app_id`), typed like the value they replace;
//! 3. secrets named by `*_file` / `*_env` keys, read;
//! 4. the Bot Framework's own variables (`MicrosoftAppId`, `MicrosoftAppPassword`,
//!    `MicrosoftAppType`, `MicrosoftAppTenantId`, `PORT`) for a one-bot
//!    deployment: they fill what the layers above leave unset, and a value set
//!    differently above is an error, never a silent winner.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::error::{ConfigError, Origin, SettingsError};

/// Prefix of the variables that set any key (`BOTFLEET__SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "BOTFLEET__";

/// Keys whose value is a secret and that may instead be given as `KEY_file`
/// (a path, e.g. a Kubernetes secret mount) or `KEY_env` (a variable name).
/// `redis_urls` is a list (its URLs may carry a password): its file or
/// variable holds the URLs one per line or comma-separated.
pub const SECRET_KEYS: [&str; 5] = [
    "app_password",
    "secret",
    "bootstrap_key",
    "redis_urls",
    "otlp_headers",
];

/// The TOML value a secret read from a file or a variable becomes: a string,
/// or for a list key (`redis_urls`) the entries split on newlines and commas,
/// trimmed, blanks dropped.
fn secret_value(stem: &str, text: &str) -> Value {
    if LIST_KEYS.contains(&stem) {
        Value::Array(
            text.split(['\n', ','])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )
    } else {
        Value::String(text.to_owned())
    }
}

/// Duration keys whose old spelling `KEY_ms` / `KEY_secs` (a whole number) is
/// still read: renamed, converted, and noted so the user can update the file.
pub const DURATION_KEYS: [&str; 15] = [
    "handler_deadline",
    "key_refresh",
    "unknown_kid_refresh_min",
    "clock_skew",
    "fetch_timeout",
    "conversation_idle",
    "tenant_idle",
    "reference_touch",
    "duplicate_window",
    "request_timeout",
    "connect_timeout",
    "max_retry",
    "max_rate_limit_wait",
    "rate_limit_margin",
    "timeout",
];

/// Keys that hold lists: an environment variable gives them comma-separated.
const LIST_KEYS: [&str; 5] = [
    "redis_urls",
    "allowed_tenants",
    "additional_allowed_domains",
    "service_url_hosts",
    "bots",
];

/// The Bot Framework variable names botfleet understands (see docs/configuration.md).
pub const BOT_FRAMEWORK_VARS: [&str; 4] = [
    "MicrosoftAppId",
    "MicrosoftAppPassword",
    "MicrosoftAppType",
    "MicrosoftAppTenantId",
];

/// Bot id given to the bot that the Bot Framework variables describe, when the
/// configuration names none.
pub const BOT_FRAMEWORK_BOT_ID: &str = "bot";

/// A snapshot of environment variables: the process's, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process environment (variables that are not UTF-8 are skipped).
    pub fn process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value, unless unset or blank (Bot Framework templates leave
    /// `MicrosoftAppPassword=` empty).
    fn non_blank(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

/// Where each key path's value came from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    by_key: HashMap<String, Origin>,
}

impl Origins {
    fn set(&mut self, key: String, origin: Origin) {
        self.by_key.insert(key, origin);
    }

    fn set_if_absent(&mut self, key: String, origin: &Origin) {
        self.by_key.entry(key).or_insert_with(|| origin.clone());
    }

    /// The origin of `key`, else of the nearest enclosing key that has one
    /// (`bots[0].handler.url` -> `bots[0].handler` -> `bots[0]` -> `bots`).
    pub fn find(&self, key: &str) -> Option<&Origin> {
        let mut k = key;
        loop {
            if let Some(o) = self.by_key.get(k) {
                return Some(o);
            }
            k = &k[..parent_len(k)?];
        }
    }

    /// Fills in the origin of each error that has none.
    pub fn attach(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        errors
            .into_iter()
            .map(|mut e| {
                if e.origin.is_none() {
                    e.origin = self.find(&e.key).cloned();
                }
                e
            })
            .collect()
    }
}

/// Length of the parent of a key path (`a.b[2]` -> `a.b`, `a.b` -> `a`).
fn parent_len(key: &str) -> Option<usize> {
    key.rfind(['.', '['])
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The merged tree, the origin of each value, and notes for the user (old key
/// names, ignored variables) that are not errors.
#[derive(Debug, Default)]
pub struct Layered {
    pub tree: Table,
    pub origins: Origins,
    pub notices: Vec<String>,
}

/// Merges the layers. `defaults` is the embedded configuration as TOML, which
/// gives the type an environment variable's text is read as.
pub fn layered(
    file: Option<&Path>,
    env: &Environment,
    defaults: &Table,
) -> Result<Layered, SettingsError> {
    let mut l = Layered::default();
    let mut errors = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        l.tree = toml::from_str(&text).map_err(|e| SettingsError::Syntax {
            path: path.to_owned(),
            message: syntax_message(&e, &text),
        })?;
        if let Ok(spanned) = toml::de::DeTable::parse(&text) {
            record_file_origins(spanned.get_ref(), "", path, &text, &mut l.origins);
        }
        rename_old_keys(&mut l.tree, "", &mut l.origins, &mut l.notices, &mut errors);
    }
    overlay_env(&mut l, env, defaults, &mut errors);
    resolve_secrets(&mut l.tree, "", env, &mut l.origins, &mut errors);
    bot_framework_env(&mut l, env, &mut errors);
    if errors.is_empty() {
        Ok(l)
    } else {
        Err(SettingsError::Invalid(l.origins.attach(errors)))
    }
}

/// `line 4, column 16: invalid basic string`: the parser's problem and where,
/// never the text (toml's own `Display` quotes the offending line, which may
/// hold an inline secret, into CI and pod logs).
fn syntax_message(e: &toml::de::Error, text: &str) -> String {
    let problem = without_quoted_text(e.message().trim_end());
    let Some(span) = e.span() else {
        return problem;
    };
    let start = span.start.min(text.len());
    let line_start = text
        .get(..start)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |i| i + 1);
    let column = text
        .get(line_start..start)
        .map_or(0, |before| before.chars().count())
        + 1;
    format!("line {}, column {column}: {problem}", line_of(text, start))
}

/// The parser's message with each quoted piece of the file (`` `123…` ``,
/// `"…"`) replaced by `…`; quoted punctuation (`` expected `"` ``) is kept, as
/// it names syntax, not content. An unclosed quote hides the rest.
fn without_quoted_text(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..open + 1];
        out.push_str(&rest[..open + 1]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push('…');
            return out;
        };
        let quoted = &after[..close];
        if quoted.chars().all(|c| c.is_ascii_punctuation()) {
            out.push_str(quoted);
        } else {
            out.push('…');
        }
        out.push_str(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

fn record_file_origins(
    table: &toml::de::DeTable<'_>,
    parent: &str,
    path: &Path,
    text: &str,
    origins: &mut Origins,
) {
    let origin = |offset: usize| Origin::File {
        path: path.to_owned(),
        line: Some(line_of(text, offset)),
    };
    for (k, v) in table.iter() {
        let key = join(parent, k.get_ref());
        origins.set(key.clone(), origin(k.span().start));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => record_file_origins(t, &key, path, text, origins),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    origins.set(item_key.clone(), origin(item.span().start));
                    if let toml::de::DeValue::Table(t) = item.get_ref() {
                        record_file_origins(t, &item_key, path, text, origins);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `handler_deadline_ms = 8000` -> `handler_deadline = "8000ms"`, in every table.
fn rename_old_keys(
    table: &mut Table,
    parent: &str,
    origins: &mut Origins,
    notices: &mut Vec<String>,
    errors: &mut Vec<ConfigError>,
) {
    let old: Vec<String> = table
        .keys()
        .filter(|k| old_duration_key(k).is_some())
        .cloned()
        .collect();
    for k in old {
        let Some((new, unit)) = old_duration_key(&k) else {
            continue;
        };
        let old_path = join(parent, &k);
        let new_path = join(parent, new);
        let Some(value) = table.remove(&k) else {
            continue;
        };
        if table.contains_key(new) {
            errors.push(ConfigError::new(
                old_path,
                format!("both `{k}` and `{new}` are set: keep only `{new}`"),
            ));
            continue;
        }
        let n = match &value {
            Value::Integer(n) => u64::try_from(*n).ok(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        let Some(n) = n else {
            errors.push(ConfigError::new(
                old_path,
                format!("expected a whole number of {}; or write `{new} = \"…\"` with a unit (\"200ms\", \"10s\")", unit_name(unit)),
            ));
            continue;
        };
        let converted = format!("{n}{unit}");
        notices.push(format!(
            "`{old_path}` is the old name of `{new_path}`: write `{new} = \"{converted}\"`"
        ));
        table.insert(new.to_owned(), Value::String(converted));
        if let Some(o) = origins.find(&old_path).cloned() {
            origins.set(new_path, o);
        }
    }
    for (k, v) in table.iter_mut() {
        let path = join(parent, k);
        match v {
            Value::Table(t) => rename_old_keys(t, &path, origins, notices, errors),
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Table(t) = item {
                        rename_old_keys(t, &format!("{path}[{i}]"), origins, notices, errors);
                    }
                }
            }
            _ => {}
        }
    }
}

/// (new key, humantime unit) of an old `_ms` / `_secs` key.
fn old_duration_key(key: &str) -> Option<(&'static str, &'static str)> {
    let (stem, unit) = if let Some(stem) = key.strip_suffix("_ms") {
        (stem, "ms")
    } else {
        (key.strip_suffix("_secs")?, "s")
    };
    DURATION_KEYS
        .iter()
        .find(|k| **k == stem)
        .map(|k| (*k, unit))
}

fn unit_name(unit: &str) -> &'static str {
    if unit == "ms" {
        "milliseconds"
    } else {
        "seconds"
    }
}

fn overlay_env(
    l: &mut Layered,
    env: &Environment,
    defaults: &Table,
    errors: &mut Vec<ConfigError>,
) {
    for (var, raw) in &env.vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let origin = Origin::Env { var: var.clone() };
        let fail = |problem: String| ConfigError {
            key: String::new(),
            problem,
            origin: Some(origin.clone()),
        };
        if rest.split("__").any(str::is_empty) {
            errors.push(fail(
                "separate key names with exactly two underscores, e.g. BOTFLEET__SERVER__LISTEN"
                    .into(),
            ));
            continue;
        }
        let mut path: Vec<Seg> = rest
            .split("__")
            .map(|seg| match seg.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(seg.to_ascii_lowercase()),
            })
            .collect();
        let starts_with_name = matches!(path.first(), Some(Seg::Key(_)));
        let (true, Some(Seg::Key(last))) = (starts_with_name, path.pop()) else {
            errors.push(fail(
                "name a key, starting and ending with a name, e.g. BOTFLEET__BOTS__0__APP_ID"
                    .into(),
            ));
            continue;
        };
        // An old `_ms`/`_secs` name sets the new key, converted.
        let (last, raw) = match old_duration_key(&last) {
            Some((new, unit)) => {
                match raw.trim().parse::<u64>() {
                    Ok(n) => {
                        l.notices.push(format!("{var} uses an old key name: set {ENV_PREFIX}…__{} = \"{n}{unit}\" instead", new.to_ascii_uppercase()));
                        (new.to_owned(), format!("{n}{unit}"))
                    }
                    Err(_) => {
                        errors.push(fail(format!(
                            "expected a whole number of {}",
                            unit_name(unit)
                        )));
                        continue;
                    }
                }
            }
            None => (last, raw.clone()),
        };
        path.push(Seg::Key(last.clone()));
        let key = render(&path);
        let existing = lookup(&l.tree, &path).or_else(|| lookup(defaults, &path));
        let value = match typed(&last, &raw, existing) {
            Ok(v) => v,
            Err(problem) => {
                errors.push(ConfigError {
                    key,
                    problem,
                    origin: Some(origin),
                });
                continue;
            }
        };
        match set(&mut l.tree, &path, value) {
            Ok(()) => {
                for n in 1..path.len() {
                    l.origins.set_if_absent(render(&path[..n]), &origin);
                }
                l.origins.set(key, origin);
            }
            Err(problem) => errors.push(ConfigError {
                key,
                problem,
                origin: Some(origin),
            }),
        }
    }
}

/// `bots[0].handler` -> [bots, 0, handler]; `None` for text that is not a key path.
fn parse_key(key: &str) -> Option<Vec<Seg>> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            return None;
        }
        path.push(Seg::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            path.push(Seg::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(path)
}

/// The keys of the table at `key` in `tree`, if it is a table with a `kind`
/// (an internally tagged enum: `handler`, `credential`), `kind` left out.
pub(crate) fn tagged_table_keys(tree: &Table, key: &str) -> Option<Vec<String>> {
    let path = parse_key(key)?;
    match lookup(tree, &path)? {
        Value::Table(t) if t.contains_key("kind") => {
            Some(t.keys().filter(|k| *k != "kind").cloned().collect())
        }
        _ => None,
    }
}

/// `tree` without `key`.`child`.
pub(crate) fn without(tree: &Table, key: &str, child: &str) -> Table {
    let mut copy = tree.clone();
    if let Some(mut path) = parse_key(key) {
        path.push(Seg::Key(child.to_owned()));
        remove(&mut copy, &path);
    }
    copy
}

fn remove(table: &mut Table, path: &[Seg]) {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return;
    };
    let Some((Seg::Key(first), rest)) = parents.split_first() else {
        table.remove(last);
        return;
    };
    let mut v = match table.get_mut(first) {
        Some(v) => v,
        None => return,
    };
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    if let Value::Table(t) = v {
        t.remove(last);
    }
}

fn lookup<'a>(table: &'a Table, path: &[Seg]) -> Option<&'a Value> {
    let (Seg::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut v = table.get(first)?;
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), Value::Table(t)) => t.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The text of an environment variable as the type of the value it replaces
/// (or, for a new key, a list for list keys, a boolean for true/false, else a string).
fn typed(key: &str, raw: &str, existing: Option<&Value>) -> Result<Value, String> {
    let list = || {
        Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )
    };
    Ok(match existing {
        Some(Value::Integer(_)) => Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a whole number"))?,
        ),
        Some(Value::Float(_)) => Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a number"))?,
        ),
        Some(Value::Boolean(_)) => Value::Boolean(parse_bool(raw)?),
        Some(Value::Array(_)) => list(),
        Some(_) => Value::String(raw.to_owned()),
        None if LIST_KEYS.contains(&key) => list(),
        None if raw.eq_ignore_ascii_case("true") || raw.eq_ignore_ascii_case("false") => {
            Value::Boolean(parse_bool(raw)?)
        }
        None => Value::String(raw.to_owned()),
    })
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{raw}` is not a boolean: use true or false")),
    }
}

/// Sets `path` in `table`, creating tables on the way; an index may append
/// one entry to an array of tables, not leave a gap.
fn set(table: &mut Table, path: &[Seg], value: Value) -> Result<(), String> {
    let Some((Seg::Key(first), rest)) = path.split_first() else {
        return Err("a key path starts with a name".into());
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let next_is_index = matches!(rest.first(), Some(Seg::Index(_)));
    let slot = table.entry(first.clone()).or_insert_with(|| {
        if next_is_index {
            Value::Array(Vec::new())
        } else {
            Value::Table(Table::new())
        }
    });
    set_in(slot, first, rest, value)
}

fn set_in(slot: &mut Value, name: &str, rest: &[Seg], value: Value) -> Result<(), String> {
    let Some((seg, tail)) = rest.split_first() else {
        *slot = value;
        return Ok(());
    };
    match (seg, slot) {
        (Seg::Key(k), Value::Table(t)) => {
            if tail.is_empty() {
                t.insert(k.clone(), value);
                return Ok(());
            }
            let next_is_index = matches!(tail.first(), Some(Seg::Index(_)));
            let child = t.entry(k.clone()).or_insert_with(|| {
                if next_is_index {
                    Value::Array(Vec::new())
                } else {
                    Value::Table(Table::new())
                }
            });
            set_in(child, k, tail, value)
        }
        (Seg::Index(i), Value::Array(items)) => {
            if *i == items.len() {
                items.push(Value::Table(Table::new()));
            }
            let len = items.len();
            match items.get_mut(*i) {
                Some(item) => set_in(item, name, tail, value),
                None => Err(format!(
                    "`{name}` has {len} entries: number new entries from {len} without gaps"
                )),
            }
        }
        (Seg::Key(_), _) => Err(format!("`{name}` is not a table")),
        (Seg::Index(_), _) => Err(format!("`{name}` is not a list")),
    }
}

/// `app_password_file = "/run/secrets/pw"` -> `app_password = "<the file's text>"`.
fn resolve_secrets(
    table: &mut Table,
    parent: &str,
    env: &Environment,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
) {
    for stem in SECRET_KEYS {
        let file_key = format!("{stem}_file");
        let env_key = format!("{stem}_env");
        let given: Vec<&str> = [stem, file_key.as_str(), env_key.as_str()]
            .into_iter()
            .filter(|k| table.contains_key(*k))
            .collect();
        if given.len() > 1 {
            errors.push(ConfigError::new(
                join(parent, given[1]),
                format!(
                    "give only one of `{stem}`, `{file_key}` and `{env_key}` (found `{}`)",
                    given.join("`, `")
                ),
            ));
            continue;
        }
        let via_key = |k: &str| join(parent, k);
        let via = |k: &str, origins: &Origins| {
            Box::new(origins.find(&via_key(k)).cloned().unwrap_or(Origin::Env {
                var: "(unknown)".into(),
            }))
        };
        if let Some(v) = table.remove(&file_key) {
            let Value::String(file) = v else {
                errors.push(ConfigError::new(via_key(&file_key), "expected a file path"));
                continue;
            };
            let file = PathBuf::from(file);
            match std::fs::read_to_string(&file) {
                // A trailing newline is almost always the editor's, not the secret's.
                Ok(text) if !text.trim_end_matches(['\r', '\n']).is_empty() => {
                    let origin = Origin::SecretFile {
                        file: file.clone(),
                        key: via_key(&file_key),
                        via: via(&file_key, origins),
                    };
                    table.insert(
                        stem.to_owned(),
                        secret_value(stem, text.trim_end_matches(['\r', '\n'])),
                    );
                    origins.set(join(parent, stem), origin);
                }
                Ok(_) => errors.push(ConfigError::new(
                    via_key(&file_key),
                    format!("{} is empty", file.display()),
                )),
                Err(e) => errors.push(ConfigError::new(
                    via_key(&file_key),
                    format!("cannot read {}: {e}", file.display()),
                )),
            }
        } else if let Some(v) = table.remove(&env_key) {
            let Value::String(var) = v else {
                errors.push(ConfigError::new(
                    via_key(&env_key),
                    "expected the name of an environment variable",
                ));
                continue;
            };
            match env.non_blank(&var) {
                Some(secret) => {
                    let origin = Origin::SecretEnv {
                        var: var.clone(),
                        key: via_key(&env_key),
                        via: via(&env_key, origins),
                    };
                    table.insert(stem.to_owned(), secret_value(stem, secret));
                    origins.set(join(parent, stem), origin);
                }
                None => errors.push(ConfigError::new(
                    via_key(&env_key),
                    format!("the environment variable {var} is not set or empty"),
                )),
            }
        }
    }
    for (k, v) in table.iter_mut() {
        let path = join(parent, k);
        match v {
            Value::Table(t) => resolve_secrets(t, &path, env, origins, errors),
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Table(t) = item {
                        resolve_secrets(t, &format!("{path}[{i}]"), env, origins, errors);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `MicrosoftAppType` values, as the Azure Bot resource names them
/// (https://learn.microsoft.com/dotnet/api/azure.provisioning.botservice.botmsaapptype).
const APP_TYPES: [&str; 3] = ["MultiTenant", "SingleTenant", "UserAssignedMSI"];

fn bot_framework_env(l: &mut Layered, env: &Environment, errors: &mut Vec<ConfigError>) {
    port_env(l, env, errors);
    let given: Vec<&str> = BOT_FRAMEWORK_VARS
        .into_iter()
        .filter(|v| env.non_blank(v).is_some())
        .collect();
    if given.is_empty() {
        return;
    }
    let env_origin = |var: &str| Origin::Env {
        var: var.to_owned(),
    };
    let app_type = match env.non_blank("MicrosoftAppType") {
        None => None,
        Some(t) => match APP_TYPES.iter().find(|a| a.eq_ignore_ascii_case(t.trim())) {
            Some(a) => Some(*a),
            None => {
                errors.push(ConfigError {
                    key: String::new(),
                    problem: format!(
                        "MicrosoftAppType `{t}` is not one of {}",
                        APP_TYPES.join(", ")
                    ),
                    origin: Some(env_origin("MicrosoftAppType")),
                });
                return;
            }
        },
    };
    let bots = l
        .tree
        .entry("bots")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(bots) = bots else {
        errors.push(ConfigError::new(
            "bots",
            "expected a list of [[bots]] tables",
        ));
        return;
    };
    if bots.len() > 1 {
        errors.push(ConfigError {
            key: String::new(),
            problem: format!(
                "{} describe(s) one bot, but the configuration has {} [[bots]]: give each bot its app_id in [[bots]] and unset {}",
                given.join(", "),
                bots.len(),
                given.join(", ")
            ),
            origin: Some(env_origin(given[0])),
        });
        return;
    }
    if bots.is_empty() {
        bots.push(Value::Table(Table::new()));
        l.origins.set("bots[0]".into(), env_origin(given[0]));
    }
    let Some(Value::Table(bot)) = bots.first_mut() else {
        errors.push(ConfigError::new("bots[0]", "expected a table"));
        return;
    };
    let origins = &mut l.origins;
    if let Some(id) = env.non_blank("MicrosoftAppId") {
        fill_from_env(
            bot,
            origins,
            errors,
            "app_id",
            "MicrosoftAppId",
            id.trim(),
            false,
        );
    }
    if !bot.contains_key("id") {
        bot.insert("id".into(), Value::String(BOT_FRAMEWORK_BOT_ID.into()));
        origins.set("bots[0].id".into(), env_origin(given[0]));
    }
    let tenant = env.non_blank("MicrosoftAppTenantId").map(str::trim);
    match (app_type, tenant) {
        (Some("MultiTenant"), Some(_)) => l.notices.push(
            "MicrosoftAppTenantId is ignored: MicrosoftAppType is MultiTenant (tokens come from the botframework.com authority)".into(),
        ),
        (Some("SingleTenant"), None) if !bot.contains_key("tenant_id") => errors.push(ConfigError {
            key: "bots[0].tenant_id".into(),
            problem: "MicrosoftAppType is SingleTenant: set MicrosoftAppTenantId to the bot's Entra tenant id".into(),
            origin: Some(env_origin("MicrosoftAppType")),
        }),
        (_, Some(t)) => fill_from_env(bot, origins, errors, "tenant_id", "MicrosoftAppTenantId", t, false),
        _ => {}
    }
    let password = env.non_blank("MicrosoftAppPassword");
    if app_type == Some("UserAssignedMSI") {
        if password.is_some() {
            errors.push(ConfigError {
                key: "bots[0].app_password".into(),
                problem: "MicrosoftAppType is UserAssignedMSI, which uses the managed identity, not a password: unset MicrosoftAppPassword".into(),
                origin: Some(env_origin("MicrosoftAppPassword")),
            });
        } else if !bot.contains_key("credential") {
            let mut c = Table::new();
            c.insert("kind".into(), Value::String("managed-identity".into()));
            bot.insert("credential".into(), Value::Table(c));
            origins.set("bots[0].credential".into(), env_origin("MicrosoftAppType"));
        }
    }
    if let Some(p) = password {
        if bot.contains_key("credential") {
            errors.push(ConfigError::new(
                "bots[0].credential",
                "MicrosoftAppPassword is set, and so is this credential: keep one",
            ));
        } else {
            fill_from_env(
                bot,
                origins,
                errors,
                "app_password",
                "MicrosoftAppPassword",
                p,
                true,
            );
        }
    }
}

/// Sets `bots[0].key` from the variable `var` unless the configuration already
/// set it; a different value set there is an error naming both (a secret's
/// value is never shown).
fn fill_from_env(
    bot: &mut Table,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
    key: &str,
    var: &str,
    value: &str,
    secret: bool,
) {
    let path = format!("bots[0].{key}");
    match bot.get(key) {
        Some(Value::String(s)) if s == value => {}
        Some(_) => errors.push(ConfigError::new(
            path.clone(),
            if secret {
                format!("{var} is set, and so is `{path}`: keep one")
            } else {
                format!(
                    "{var} is `{value}`, but the configuration sets `{path}` otherwise: keep one"
                )
            },
        )),
        None => {
            bot.insert(key.to_owned(), Value::String(value.to_owned()));
            origins.set(
                path,
                Origin::Env {
                    var: var.to_owned(),
                },
            );
        }
    }
}

/// `PORT` (App Service, Bot Framework samples): listen on all interfaces on
/// that port, unless `server.listen` is set.
fn port_env(l: &mut Layered, env: &Environment, errors: &mut Vec<ConfigError>) {
    let Some(port) = env.non_blank("PORT") else {
        return;
    };
    let origin = Origin::Env { var: "PORT".into() };
    let set_listen = lookup(
        &l.tree,
        &[Seg::Key("server".into()), Seg::Key("listen".into())],
    )
    .is_some();
    if set_listen {
        let at = l
            .origins
            .find("server.listen")
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        l.notices
            .push(format!("PORT={port} is ignored: server.listen is set{at}"));
        return;
    }
    match port.trim().parse::<u16>() {
        Ok(p) => {
            let server = l
                .tree
                .entry("server")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(t) = server {
                t.insert("listen".into(), Value::String(format!("0.0.0.0:{p}")));
                l.origins.set("server.listen".into(), origin);
            }
        }
        Err(_) => errors.push(ConfigError {
            key: "server.listen".into(),
            problem: format!("PORT `{port}` is not a port number (1-65535)"),
            origin: Some(origin),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        let mut o = Origins::default();
        o.set("bots[0]".into(), Origin::Env { var: "X".into() });
        assert_eq!(
            o.find("bots[0].handler.url"),
            Some(&Origin::Env { var: "X".into() })
        );
        assert_eq!(o.find("server.listen"), None);
    }

    #[test]
    fn env_text_takes_the_replaced_type() {
        let n = Value::Integer(1);
        assert_eq!(typed("workers", "4", Some(&n)), Ok(Value::Integer(4)));
        assert!(typed("workers", "four", Some(&n)).is_err());
        assert_eq!(
            typed("redis_urls", "redis://a, redis://b", None),
            Ok(Value::Array(vec![
                Value::String("redis://a".into()),
                Value::String("redis://b".into())
            ]))
        );
        assert_eq!(
            typed("app_id", "123", None),
            Ok(Value::String("123".into()))
        );
    }

    #[test]
    fn syntax_messages_keep_no_quoted_file_text() {
        assert_eq!(
            without_quoted_text("invalid type: integer `12345678901234567890` as i128, expected any valid TOML value"),
            "invalid type: integer `…` as i128, expected any valid TOML value"
        );
        assert_eq!(
            without_quoted_text("invalid basic string, expected `\"`"),
            "invalid basic string, expected `\"`"
        );
        assert_eq!(
            without_quoted_text("duplicate key `hunter2`"),
            "duplicate key `…`"
        );
        assert_eq!(without_quoted_text("bad \"TOPSECRET"), "bad \"…");
        let text = "a = 1\nb = \"TOPSECRET\n";
        let e = toml::from_str::<Table>(text).expect_err("unterminated string");
        let m = syntax_message(&e, text);
        assert!(
            m.starts_with("line 2, column ") && !m.contains("TOPSECRET"),
            "{m}"
        );
    }

    #[test]
    fn key_paths_parse_and_remove() {
        let mut t: Table = toml::from_str(
            "[[bots]]\nid = \"a\"\n[[bots]]\nid = \"b\"\nhandler = { kind = \"webhook\", url = \"u\", timeout = \"x\" }\n",
        )
        .expect("toml");
        assert_eq!(
            parse_key("bots[1].handler"),
            Some(vec![
                Seg::Key("bots".into()),
                Seg::Index(1),
                Seg::Key("handler".into())
            ])
        );
        assert_eq!(parse_key("a..b"), None);
        assert_eq!(
            tagged_table_keys(&t, "bots[1].handler"),
            Some(vec!["timeout".to_owned(), "url".to_owned()])
        );
        assert_eq!(tagged_table_keys(&t, "bots[0]"), None);
        t = without(&t, "bots[1].handler", "timeout");
        assert_eq!(
            tagged_table_keys(&t, "bots[1].handler"),
            Some(vec!["url".to_owned()])
        );
    }

    #[test]
    fn set_appends_without_gaps() {
        let mut t = Table::new();
        let path = |i| {
            vec![
                Seg::Key("bots".into()),
                Seg::Index(i),
                Seg::Key("id".into()),
            ]
        };
        assert!(set(&mut t, &path(0), Value::String("a".into())).is_ok());
        assert!(set(&mut t, &path(1), Value::String("b".into())).is_ok());
        assert!(set(&mut t, &path(3), Value::String("d".into())).is_err());
        assert_eq!(render(&path(1)), "bots[1].id");
    }
}
