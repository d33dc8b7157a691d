//! The parser's state and the single values it reads.
//!
//! [`Parser`] holds the text (for spans), the diagnostics found so far and what later tables refer
//! to (the loaded `[[set]]`s and country database). Its methods here read one value out of a
//! `toml_edit` item (a table's keys, a string, a list, ports, time windows, a date) and report a
//! diagnostic at the value's span when it is wrong; the functions after them are the syntaxes of
//! values written as strings (port ranges, addresses, destinations, rates). Nothing here asks the
//! resolver.

use crate::diag::{Diagnostic, Severity};
use crate::model::*;
use crate::resolver::Resolver;
use ipnet::IpNet;
use std::net::IpAddr;
use toml_edit::{Item, TableLike, Value};

/// One parse of one policy text.
pub(super) struct Parser<'a> {
    pub(super) src: &'a str,
    /// Asked only by the methods in `resolve`.
    pub(super) resolver: &'a dyn Resolver,
    /// Every diagnostic so far, in the order found (`load` sorts them by position).
    pub(super) diags: Vec<Diagnostic>,
    /// The `[[set]]`s, read before the rules so that rules can name them wherever they stand.
    pub(super) sets: Vec<NamedSet>,
    /// Names of `[[set]]`s whose file did not load (already reported): rules naming them are not
    /// reported a second time.
    pub(super) failed_sets: Vec<String>,
    pub(super) countries: Option<CountryDbRef>,
    /// The loaded country database, when `[countries]` names one that loads.
    pub(super) country_db: Option<crate::geo::CountryDb>,
}

/// One entry of a table: the key's name and span, and the item.
pub(super) struct Entry<'d> {
    pub(super) key: &'d str,
    pub(super) key_span: Span,
    pub(super) item: &'d Item,
}

impl<'a> Parser<'a> {
    pub(super) fn error(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        let span = clamp(self.src, span);
        self.diags.push(Diagnostic::error(code, span, message));
    }

    pub(super) fn warning(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(code, span, message));
    }

    pub(super) fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == Severity::Error).count()
    }

    pub(super) fn line(&self, span: &Span) -> usize {
        crate::diag::line_col(self.src, span.start).0
    }

    /// Span of an item, falling back to `fallback` (usually its key) for the rare items that
    /// carry none.
    pub(super) fn span(&self, item: &Item, fallback: &Span) -> Span {
        clamp(self.src, item.span().unwrap_or_else(|| fallback.clone()))
    }

    pub(super) fn vspan(&self, value: &Value, fallback: &Span) -> Span {
        clamp(self.src, value.span().unwrap_or_else(|| fallback.clone()))
    }

    /// The entries of a table, reporting every key not in `allowed` (with a suggestion when it
    /// looks like a typo of an allowed one). Also returns the keys suggested, so that a missing
    /// required key that was merely misspelt is not reported a second time.
    pub(super) fn entries<'d>(
        &mut self,
        table: &'d dyn TableLike,
        section: &str,
        allowed: &'static [&'static str],
    ) -> (Vec<Entry<'d>>, Vec<&'static str>) {
        let mut out = Vec::new();
        let mut suggested = Vec::new();
        for (key, item) in table.iter() {
            let key_span = table.get_key_value(key).and_then(|(k, _)| k.span()).or_else(|| item.span()).unwrap_or(0..0);
            let key_span = clamp(self.src, key_span);
            if allowed.contains(&key) {
                out.push(Entry { key, key_span, item });
            } else {
                let hint = match suggest(key, allowed) {
                    Some(s) => {
                        suggested.push(s);
                        format!("did you mean `{s}`?")
                    }
                    None => format!("expected {}", one_of(allowed)),
                };
                self.error("unknown-key", key_span, format!("unknown key `{key}` in {section}; {hint}"));
            }
        }
        (out, suggested)
    }

    /// Reports a missing required key, unless an unknown key was already reported as its typo.
    pub(super) fn require(&mut self, t: &dyn TableLike, key: &str, suggested: &[&str], span: &Span, message: &str) {
        if !t.contains_key(key) && !suggested.contains(&key) {
            self.error("missing-key", span.clone(), message);
        }
    }

    /// The tables of an array of tables (`[[rule]]`), also accepting an inline array of inline
    /// tables (`rule = [{ ... }]`), which TOML considers the same data.
    pub(super) fn tables<'d>(&mut self, e: &Entry<'d>, header: &str) -> Vec<(&'d dyn TableLike, Span)> {
        let mut out: Vec<(&'d dyn TableLike, Span)> = Vec::new();
        match e.item {
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    let span = clamp(self.src, t.span().unwrap_or_else(|| e.key_span.clone()));
                    out.push((t, span));
                }
            }
            Item::Value(Value::Array(a)) => {
                for v in a.iter() {
                    let span = self.vspan(v, &e.key_span);
                    match v.as_inline_table() {
                        Some(t) => out.push((t, span)),
                        None => self.error(
                            "wrong-type",
                            span,
                            format!("expected a table like {header}, found {}", value_type(v)),
                        ),
                    }
                }
            }
            other => {
                let span = self.span(other, &e.key_span);
                self.error(
                    "wrong-type",
                    span,
                    format!("`{}` must be an array of tables, written {header}; found {}", e.key, item_type(other)),
                );
            }
        }
        out
    }

    pub(super) fn wrong_type(&mut self, span: Span, expected: &str, found: &Item) {
        self.error("wrong-type", span, format!("expected {expected}, found {}", item_type(found)));
    }

    /// The item as a plain value; tables where a value is expected are a type error.
    pub(super) fn value<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d Value> {
        match e.item {
            Item::Value(v) => Some(v),
            other => {
                let span = self.span(other, &e.key_span);
                self.wrong_type(span, expected, other);
                None
            }
        }
    }

    pub(super) fn string<'d>(&mut self, e: &Entry<'d>) -> Option<(&'d str, Span)> {
        let v = self.value(e, "a string")?;
        let span = self.vspan(v, &e.key_span);
        match v.as_str() {
            Some(s) => Some((s, span)),
            None => {
                self.error("wrong-type", span, format!("expected a string, found {}", value_type(v)));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, e: &Entry) -> Option<bool> {
        let v = self.value(e, "a boolean (true or false)")?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                let span = self.vspan(v, &e.key_span);
                self.error("wrong-type", span, format!("expected a boolean (true or false), found {}", value_type(v)));
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub(super) fn choice<T: Copy>(&mut self, e: &Entry, choices: &[(&str, T)]) -> Option<T> {
        let (s, span) = self.string(e)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        self.error("bad-value", span, format!("invalid {} `{s}`; expected {}", e.key, one_of(&names)));
        None
    }

    /// The elements of a list, or the value itself when a single value stands for a list of one.
    pub(super) fn list<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<Vec<&'d Value>> {
        let v = self.value(e, expected)?;
        Some(match v.as_array() {
            Some(a) => a.iter().collect(),
            None => vec![v],
        })
    }

    /// An integer in `min..=max`.
    pub(super) fn integer(&mut self, e: &Entry, min: i64, max: i64) -> Option<i64> {
        let v = self.value(e, "an integer")?;
        let span = self.vspan(v, &e.key_span);
        match v.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error("bad-value", span, format!("{} {n} is out of range {min} to {max}", e.key));
                None
            }
            None => {
                self.error("wrong-type", span, format!("expected an integer, found {}", value_type(v)));
                None
            }
        }
    }

    /// "ADDR:PORT" strings (`[v6]:PORT` for IPv6); with a default port, the port may be left out.
    pub(super) fn socket_addrs(&mut self, e: &Entry, default_port: Option<u16>) -> Option<Vec<std::net::SocketAddr>> {
        let mut out = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of \"ADDR:PORT\" strings")? {
            let span = self.vspan(v, &e.key_span);
            let Some(s) = v.as_str() else {
                ok = false;
                self.error("wrong-type", span, format!("expected an \"ADDR:PORT\" string, found {}", value_type(v)));
                continue;
            };
            match parse_destination(s) {
                Ok((addr, Some(port))) => out.push(std::net::SocketAddr::new(addr, port)),
                Ok((addr, None)) if default_port.is_some() => {
                    out.push(std::net::SocketAddr::new(addr, default_port.unwrap_or_default()))
                }
                Ok((_, None)) => {
                    ok = false;
                    self.error("bad-address", span, format!("`{s}` needs a port, e.g. \"127.0.0.1:53\""));
                }
                Err(m) => {
                    ok = false;
                    self.error("bad-address", span, m);
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn ports(&mut self, e: &Entry) -> Option<Vec<PortRange>> {
        let mut out = Vec::new();
        let mut ok = true;
        for v in self.list(e, "a list of ports")? {
            let span = self.vspan(v, &e.key_span);
            let r = match v {
                Value::Integer(n) => port_number(*n.value()).map(PortRange::single),
                Value::String(s) => parse_port_range(s.value()),
                other => Err(format!("expected a port number or a \"FROM-TO\" range, found {}", value_type(other))),
            };
            match r {
                Ok(r) => out.push(r),
                Err(m) => {
                    ok = false;
                    let code =
                        if matches!(v, Value::Integer(_) | Value::String(_)) { "bad-port" } else { "wrong-type" };
                    self.error(code, span, m);
                }
            }
        }
        ok.then_some(out)
    }

    /// `when`: one window or a list of them.
    pub(super) fn windows(&mut self, e: &Entry) -> Option<Vec<Window>> {
        let items: Vec<&Value> = match e.item.as_value() {
            Some(v) if v.is_str() => vec![v],
            _ => self.list(e, "a time window such as \"Mon-Fri 09:00-17:00\" or a list of them")?,
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in items {
            let span = self.vspan(v, &e.key_span);
            match v.as_str().map(crate::time::parse_window) {
                Some(Ok((days, start, end))) => out.push(Window { days, start, end, span }),
                Some(Err(m)) => {
                    ok = false;
                    self.error("bad-window", span, m);
                }
                None => {
                    ok = false;
                    self.error("wrong-type", span, format!("expected a time window (a string), found {}", value_type(v)));
                }
            }
        }
        ok.then_some(out)
    }

    /// A user or group as written: a numeric id (checked here) or a name, which
    /// [`Parser::principal`] looks up.
    pub(super) fn principal_written<'v>(&mut self, v: &'v Value, span: &Span, kind: Kind) -> Option<Written<'v>> {
        match v {
            Value::Integer(n) => match u32::try_from(*n.value()) {
                Ok(id) => Some(Written::Id(id)),
                Err(_) => {
                    self.error(
                        "bad-value",
                        span.clone(),
                        format!("{} id {} is out of range 0 to {}", kind.word(), n.value(), u32::MAX),
                    );
                    None
                }
            },
            Value::String(s) => Some(Written::Name(s.value())),
            other => {
                self.error(
                    "wrong-type",
                    span.clone(),
                    format!("expected a {} name or numeric id, found {}", kind.word(), value_type(other)),
                );
                None
            }
        }
    }

    pub(super) fn date(&mut self, e: &Entry) -> Option<Date> {
        let v = self.value(e, "a date like 2027-06-01")?;
        let span = self.vspan(v, &e.key_span);
        match v {
            Value::Datetime(dt) => {
                let dt = dt.value();
                match (dt.date, dt.time, dt.offset) {
                    (Some(d), None, None) => Some(Date { year: d.year as i16, month: d.month as i8, day: d.day as i8 }),
                    _ => {
                        self.error("bad-value", span, "expected a date like 2027-06-01 without a time");
                        None
                    }
                }
            }
            Value::String(s) => {
                self.error(
                    "wrong-type",
                    span,
                    format!(
                        "expected a TOML date like 2027-06-01, found a string; write it without quotes: {}",
                        s.value()
                    ),
                );
                None
            }
            other => {
                self.error("wrong-type", span, format!("expected a date like 2027-06-01, found {}", value_type(other)));
                None
            }
        }
    }
}

/// Keeps a span inside the text whatever the parser reported, so rendering never goes out of bounds.
pub(super) fn clamp(src: &str, span: Span) -> Span {
    let end = span.end.min(src.len());
    span.start.min(end)..end
}

pub(super) const ACTIONS: &[(&str, Action)] = &[("allow", Action::Allow), ("deny", Action::Deny)];

/// A user or group as the policy writes it.
pub(super) enum Written<'v> {
    Id(u32),
    Name(&'v str),
}

/// Whether a principal is a user or a group: which lookup and which words in messages.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    User,
    Group,
}

impl Kind {
    pub(super) fn word(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
        }
    }
    pub(super) fn unknown_code(self) -> &'static str {
        match self {
            Kind::User => "unknown-user",
            Kind::Group => "unknown-group",
        }
    }
    pub(super) fn expected_list(self) -> &'static str {
        match self {
            Kind::User => "a user or a list of users",
            Kind::Group => "a group or a list of groups",
        }
    }
}

/// "a string", "an integer", ... for type errors.
pub(super) fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

pub(super) fn item_type(i: &Item) -> &'static str {
    match i {
        Item::None => "nothing",
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
pub(super) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The allowed key closest to a misspelt one, if it is close enough to be a typo.
pub(super) fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, a)| *d <= 2 && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Set names become part of nft set names (`s_NAME_v4`); 48 characters keep those short and
/// readable in listings, far below the kernel's 256.
pub(super) fn valid_set_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 48 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `N/second`, `N/minute`, `N/hour` or `N/day` -> (N, seconds of the unit).
pub(super) fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("invalid rate `{s}`; expected N/second, N/minute, N/hour or N/day, e.g. \"10/minute\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("rate `{s}` allows nothing; use a deny rule instead"));
    }
    let per = match unit.trim() {
        "second" | "s" => 1,
        "minute" | "min" => 60,
        "hour" | "h" => 3600,
        "day" | "d" => 86_400,
        _ => return Err(bad()),
    };
    Ok((n, per))
}

pub(super) fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port {n} is out of range 1 to 65535")),
    }
}

/// "53" or "8000-8080" (digits only, no spaces or signs).
pub(super) fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let num = |t: &str| -> Result<u16, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid port range `{s}`; expected a number or FROM-TO like \"8000-8080\""));
        }
        // Digits only, so the only parse failure is overflow; saturate to report the range.
        port_number(t.parse::<i64>().unwrap_or(i64::MAX))
    };
    match s.split_once('-') {
        None => num(s).map(PortRange::single),
        Some((a, b)) => {
            let (first, last) = (num(a)?, num(b)?);
            if first > last {
                return Err(format!("port range `{s}` is reversed; write {last}-{first}"));
            }
            Ok(PortRange { first, last })
        }
    }
}

/// An address (a host network) or a CIDR whose host bits are all zero.
pub(super) fn parse_network(s: &str) -> Result<IpNet, (&'static str, String)> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err(("host-bits-set", format!("`{s}` has host bits set; the network is {}", net.trunc()))),
        Err(_) => Err((
            "bad-address",
            format!("invalid address `{s}`; expected an IP address or CIDR like 192.0.2.0/24 or 2001:db8::/32"),
        )),
    }
}

/// Whether a string that is no valid network was meant as an address (digits, dots, colons and
/// slashes only), so the error is about the address and not about a domain name.
pub(super) fn looks_like_address(s: &str) -> bool {
    s.contains(':') || s.contains('/') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// NAME[:PORT] of a domain expectation; `None` when it does not look like a name at all.
pub(super) fn parse_name_destination(s: &str) -> Option<Result<(String, Option<u16>), String>> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        Some(_) => return None,
        None => (s, None),
    };
    if looks_like_address(host) || host.starts_with("*.") {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match port_number(p.parse::<i64>().unwrap_or(i64::MAX)) {
                Ok(p) => Some(p),
                Err(m) => return Some(Err(m)),
            }
        }
        Some(_) => return Some(Err(format!("invalid destination `{s}`; expected NAME[:PORT]"))),
    };
    Some(crate::dns::parse_domain(host).map(|(n, _)| (n, port)))
}

/// ADDR[:PORT] of an expectation: "192.0.2.1:53", "[2001:db8::1]:443", "2001:db8::1", "192.0.2.1".
pub(super) fn parse_destination(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let bad =
        || format!("invalid destination `{s}`; expected ADDR[:PORT] like \"192.0.2.53:53\" or \"[2001:db8::1]:443\"");
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        port_number(p.parse::<i64>().unwrap_or(i64::MAX))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').ok_or_else(bad)?)?),
        };
        return Ok((IpAddr::V6(addr), port));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    let (addr, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    Ok((IpAddr::V4(addr), Some(port(p)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("53"), Ok(PortRange::single(53)));
        assert_eq!(parse_port_range("1-65535"), Ok(PortRange { first: 1, last: 65535 }));
        assert!(parse_port_range("0-5").is_err());
        assert!(parse_port_range("5-").is_err());
        assert!(parse_port_range("-5").is_err());
        assert!(parse_port_range("+5").is_err());
        assert!(parse_port_range("5 - 6").is_err());
        assert!(parse_port_range("99999999999999999999999").is_err());
        assert!(parse_port_range("9-8").unwrap_err().contains("reversed"));
    }

    #[test]
    fn destinations() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_destination("192.0.2.1:53"), Ok((v4, Some(53))));
        assert_eq!(parse_destination("192.0.2.1"), Ok((v4, None)));
        assert_eq!(parse_destination("[2001:db8::1]:443"), Ok((v6, Some(443))));
        assert_eq!(parse_destination("[2001:db8::1]"), Ok((v6, None)));
        assert_eq!(parse_destination("2001:db8::1"), Ok((v6, None)));
        for bad in [
            "",
            ":",
            "192.0.2.1:",
            "192.0.2.1:0",
            "192.0.2.1:65536",
            "[192.0.2.1]:1",
            "[::1]x",
            "[::1",
            "host:80",
            "::1:x",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(parse_network("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_network("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse_network("192.0.2.1/24").unwrap_err().0, "host-bits-set");
        assert_eq!(parse_network("192.0.2.0/33").unwrap_err().0, "bad-address");
    }
}
