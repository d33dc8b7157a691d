//! The step that asks the host: everything the parser learns through the [`Resolver`](crate::resolver::Resolver): the files
//! of `[[set]]`s, the country database, cgroup ids, user and group ids and primary groups.
//!
//! The walk calls it at the point where it reads each such value, so the diagnostics come in the
//! same order as if it were inline; kept apart, the grammar holds no facts about the host.

use super::values::{Kind, Parser, Written};
use crate::model::*;
use toml_edit::Value;

impl<'a> Parser<'a> {
    /// A user or group: a numeric id, or a name looked up through the resolver.
    pub(super) fn principal(&mut self, v: &Value, fallback: &Span, kind: Kind) -> Option<Principal> {
        let span = self.vspan(v, fallback);
        let name = match self.principal_written(v, &span, kind)? {
            Written::Id(id) => return Some(Principal { name: None, id, span }),
            Written::Name(name) => name,
        };
        let id = match kind {
            Kind::User => self.resolver.user(name),
            Kind::Group => self.resolver.group(name),
        };
        match id {
            Some(id) => Some(Principal { name: Some(name.to_string()), id, span }),
            None => {
                let hint = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                    " (write numeric ids without quotes)"
                } else {
                    ""
                };
                self.error(kind.unknown_code(), span, format!("unknown {} `{name}`{hint}", kind.word()));
                None
            }
        }
    }

    /// The group an expectation without `group` connects as: its user's primary group (root's
    /// is 0 even where the resolver does not know it). `span` is where to say it is unknown.
    pub(super) fn primary_group(&mut self, uid: u32, span: Span) -> Option<u32> {
        match self.resolver.primary_group(uid) {
            Some(g) => Some(g),
            None if uid == 0 => Some(0),
            None => {
                self.error("no-primary-group", span, format!("cannot tell the primary group of uid {uid}; add `group`"));
                None
            }
        }
    }

    /// Reads and parses the file of the `[[set]]` `name`, adding it to the loaded sets.
    pub(super) fn load_set(&mut self, name: String, name_span: Span, file: String, file_span: Span) {
        // Until it loads, the set counts as failed (every early return below reported why).
        self.failed_sets.push(name.clone());
        let bytes = match self.resolver.read_file(&file) {
            Ok(bytes) => bytes,
            Err(m) => {
                self.error("set-file", file_span, format!("cannot read set file: {m}"));
                return;
            }
        };
        // Invalid UTF-8 is a bad line like any other, with its position in the file.
        match crate::setfile::parse_set_file_bytes(&bytes) {
            Ok(f) => {
                self.failed_sets.pop();
                self.sets.push(NamedSet {
                    name,
                    name_span,
                    file,
                    file_span,
                    ranges: std::sync::Arc::new(f.ranges),
                    entries: f.entries,
                })
            }
            Err(errors) => {
                for e in &errors {
                    self.error("set-file", file_span.clone(), format!("{file}:{}:{}: {}", e.line, e.col, e.message));
                }
            }
        }
    }

    /// A rule's cgroup (`service` or `cgroup`, already checked and turned into `path`), with the id
    /// it has on this host and the path nft writes for it. A cgroup that does not exist is a
    /// warning, not an error: the service may start later.
    pub(super) fn cgroup_match(&mut self, text: &str, service: bool, path: String, span: Span) -> CgroupMatch {
        let prefix = self.resolver.cgroup2_prefix();
        let id = prefix.as_ref().and_then(|_| self.resolver.cgroup_id(&path));
        let what = if service { format!("service {text}") } else { format!("cgroup {text}") };
        match (&prefix, id) {
            (None, _) => self.warning(
                "no-cgroup2",
                span.clone(),
                format!("cgroup v2 is not mounted here, so the rule for {what} matches no process"),
            ),
            (Some(_), None) => self.warning(
                "missing-cgroup",
                span.clone(),
                format!("{what} has no cgroup yet (/{path}); the rule matches no process until the policy is applied again after it starts"),
            ),
            _ => {}
        }
        let nft_path = match prefix.as_deref() {
            Some(p) if !p.is_empty() => format!("{}/{path}", p.trim_matches('/')),
            _ => path.clone(),
        };
        CgroupMatch { written: text.to_string(), service, path, id, nft_path, span }
    }

    /// Reads and parses the country database: a MaxMind DB, a DB-IP CSV, or a GeoLite2 blocks CSV
    /// with its locations file (named by `locations`, or found next to it by MaxMind's naming) and
    /// the other family's blocks file when it is there.
    pub(super) fn load_country_db(&mut self, database: &str, span: Span, locations: Option<(String, Span)>) {
        use crate::geo::{CountryDb, CountryDbFormat, CsvFile, GeoError};
        let bytes = match self.resolver.read_file(database) {
            Ok(b) => b,
            Err(m) => return self.error("country-db", span, format!("cannot read the country database: {m}")),
        };
        // A path with the file name replaced, for the files MaxMind ships side by side.
        let beside = |name: &str| match database.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_string(),
        };
        let file_name = database.rsplit('/').next().unwrap_or(database);
        // Errors as `FILE:LINE:COL: message` for CSV lines, `FILE: message` otherwise.
        let describe = |e: GeoError, blocks: &[String], locations: &str| match e {
            GeoError::Csv { file, line, col, msg } => {
                let name = match file {
                    CsvFile::Blocks(i) => blocks.get(i).map_or(database, |n| n.as_str()),
                    CsvFile::Locations => locations,
                };
                format!("{name}:{line}:{col}: {msg}")
            }
            e => format!("{database}: {e}"),
        };
        let result: Result<CountryDb, String> = match CountryDb::detect(&bytes) {
            CountryDbFormat::Mmdb => CountryDb::from_mmdb(&bytes).map_err(|e| describe(e, &[], "")),
            CountryDbFormat::DbIpCsv => crate::geo::csv_text(&bytes, CsvFile::Blocks(0))
                .and_then(|t| CountryDb::from_csv(t, None))
                .map_err(|e| describe(e, &[], "")),
            CountryDbFormat::GeoLiteCsv => {
                let loc_name = match &locations {
                    Some((l, _)) => Some(l.clone()),
                    None => crate::geo::geolite_locations_name(file_name).map(|n| beside(&n)),
                };
                let Some(loc_name) = loc_name else {
                    return self.error(
                        "country-db",
                        span,
                        format!("{database} is a GeoLite2 blocks file: name its locations file with `locations = \"FILE\"`"),
                    );
                };
                let loc = match self.resolver.read_file(&loc_name) {
                    Ok(b) => b,
                    Err(m) => {
                        let lspan = locations.as_ref().map_or(span.clone(), |l| l.1.clone());
                        return self.error("country-db", lspan, format!("cannot read the GeoLite2 locations file: {m}"));
                    }
                };
                // The other family's blocks file is optional: a database may hold one family.
                let sibling = crate::geo::geolite_sibling_blocks_name(file_name)
                    .map(|n| beside(&n))
                    .and_then(|n| self.resolver.read_file(&n).ok().map(|b| (n, b)));
                let mut names = vec![database.to_string()];
                names.extend(sibling.as_ref().map(|s| s.0.clone()));
                let texts: Result<Vec<&str>, GeoError> = std::iter::once(&bytes)
                    .chain(sibling.as_ref().map(|s| &s.1))
                    .enumerate()
                    .map(|(i, b)| crate::geo::csv_text(b, CsvFile::Blocks(i)))
                    .collect();
                match (texts, crate::geo::csv_text(&loc, CsvFile::Locations)) {
                    (Ok(t), Ok(l)) => CountryDb::from_geolite_csv(&t, l),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
                .map_err(|e| describe(e, &names, &loc_name))
            }
        };
        match result {
            Ok(db) => self.country_db = Some(db),
            Err(m) => self.error("country-db", span, m),
        }
    }
}
