//! Metadata filters: the filter language (a JSON object parsed into an expression tree, with
//! errors that name the path of the offending part), the one evaluation of a condition on a JSON
//! value that shards and live writes share, and its evaluation on a shard's dictionary-encoded
//! metadata columns: each condition is evaluated once per distinct value of its column, then
//! documents are marked by their value ids, and the marks combined with and / or / not.
//!
//! The language (documented in the README's filter section):
//! - `{"field": value}`: equality (shorthand for `{"field": {"$eq": value}}`); several fields AND.
//! - `{"field": {"$eq" | "$ne" | "$lt" | "$lte" | "$gt" | "$gte": v, "$in" | "$nin": [..],
//!   "$exists": bool}}`; several operators on one field AND.
//! - `{"$and": [filter, ..]}`, `{"$or": [filter, ..]}`, `{"$not": filter}`.
//!
//! Numbers compare with numbers (as numbers: `1` equals `1.0`), strings with strings (by bytes);
//! any other pairing does not match. A document without the field matches `$ne`, `$nin`,
//! `$exists: false` and nothing else (as in MongoDB and Pinecone). Arrays and objects are values
//! like any other: equal when their canonical JSON texts are, never ordered.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::error::ShardError;
use super::format::{
    inconsistent, native_u32, ArchivedMetadataColumn, ArchivedStringColumn, NO_VALUE,
};

/// Nesting of `$and` / `$or` / `$not` a filter may have.
pub const FILTER_DEPTH_MAX: usize = 8;
/// Field conditions a filter may have (each operator on a field is one).
pub const FILTER_CONDITIONS_MAX: usize = 128;
/// Values one `$in` or `$nin` may list.
pub const FILTER_IN_VALUES_MAX: usize = 1024;

/// A parsed metadata filter. It keeps the JSON object it was parsed from, which is what it
/// serialises back to (exactly: it crosses the wire to shard hosts and names cached answers);
/// deserialising parses and validates. The empty filter `{}` passes every passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct Filter {
    json: Map<String, Value>,
    expr: Expr,
}

/// Why a filter is refused: what is wrong, and where (e.g. `filter.$or[1].year.$gte`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{path}`: {message}")]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

/// The filter as a tree.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// Passes when every member does (an empty list passes everything: the filter `{}`).
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Condition {
        field: String,
        test: Test,
    },
}

/// What one field's value must satisfy; `None` is a document without the field.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(Value),
    Ne(Value),
    /// The stored value ordered against the operand (a number or a string) must be one of `accept`.
    Compare {
        operand: Value,
        accept: Accept,
    },
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Accept {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            json: Map::new(),
            expr: Expr::And(Vec::new()),
        }
    }
}

impl TryFrom<Map<String, Value>> for Filter {
    type Error = FilterError;
    fn try_from(json: Map<String, Value>) -> Result<Filter, FilterError> {
        Filter::parse(json)
    }
}

impl From<Filter> for Map<String, Value> {
    fn from(filter: Filter) -> Map<String, Value> {
        filter.json
    }
}

impl Filter {
    /// Parses and validates a filter object; errors name the path below `filter`.
    pub fn parse(json: Map<String, Value>) -> Result<Filter, FilterError> {
        let mut parser = Parser { conditions: 0 };
        let expr = parser.filter(&json, "filter", 0)?;
        Ok(Filter { json, expr })
    }

    /// The JSON object the filter was parsed from.
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// Every metadata field the filter names.
    pub fn fields(&self) -> BTreeSet<&str> {
        let mut fields = BTreeSet::new();
        self.expr.collect_fields(&mut fields);
        fields
    }

    /// Whether a passage with this metadata passes (live writes; the shard's columns give the
    /// same answers through [`PassMask::resolve`]).
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.expr.matches(metadata)
    }
}

struct Parser {
    conditions: usize,
}

fn error(path: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// `path.key`, or `path["key"]` when the key is not a plain name.
fn child(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'));
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Parser {
    /// A filter object at `path`, `depth` logical operators deep.
    fn filter(
        &mut self,
        json: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Expr, FilterError> {
        let mut all = Vec::with_capacity(json.len());
        for (key, value) in json {
            let here = child(path, key);
            let expr = match key.as_str() {
                "$and" | "$or" => {
                    let items = value.as_array().ok_or_else(|| {
                        error(&here, format!("takes an array of filters, not {}", kind(value)))
                    })?;
                    if items.is_empty() {
                        return Err(error(&here, "needs at least one filter"));
                    }
                    let members = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.operand(item, &format!("{here}[{i}]"), depth))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$and" {
                        Expr::And(members)
                    } else {
                        Expr::Or(members)
                    }
                }
                "$not" => Expr::Not(Box::new(self.operand(value, &here, depth)?)),
                operator if operator.starts_with('$') => {
                    return Err(error(
                        &here,
                        format!("unknown operator `{operator}` here (expected a field name, `$and`, `$or` or `$not`)"),
                    ))
                }
                field => self.field(field, value, &here)?,
            };
            all.push(expr);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    /// The operand of a logical operator: a non-empty filter object, one level deeper.
    fn operand(&mut self, value: &Value, path: &str, depth: usize) -> Result<Expr, FilterError> {
        if depth + 1 > FILTER_DEPTH_MAX {
            return Err(error(
                path,
                format!("filters nest at most {FILTER_DEPTH_MAX} `$and`/`$or`/`$not` deep"),
            ));
        }
        match value {
            Value::Object(json) if json.is_empty() => Err(error(path, "is an empty filter")),
            Value::Object(json) => self.filter(json, path, depth + 1),
            other => Err(error(
                path,
                format!("must be a filter object, not {}", kind(other)),
            )),
        }
    }

    /// `value` for `field`: an object of operators, or any other value to be equal to.
    fn field(&mut self, field: &str, value: &Value, path: &str) -> Result<Expr, FilterError> {
        let operators = match value {
            Value::Object(operators) if operators.keys().any(|k| k.starts_with('$')) => operators,
            _ => return self.condition(field, Test::Eq(value.clone()), path),
        };
        let mut all = Vec::with_capacity(operators.len());
        for (operator, operand) in operators {
            let here = child(path, operator);
            let test = match operator.as_str() {
                "$eq" => Test::Eq(operand.clone()),
                "$ne" => Test::Ne(operand.clone()),
                "$lt" | "$lte" | "$gt" | "$gte" => {
                    if !matches!(operand, Value::Number(_) | Value::String(_)) {
                        return Err(error(
                            &here,
                            format!("compares with a number or a string, not {}", kind(operand)),
                        ));
                    }
                    let accept = match operator.as_str() {
                        "$lt" => Accept::Less,
                        "$lte" => Accept::LessOrEqual,
                        "$gt" => Accept::Greater,
                        _ => Accept::GreaterOrEqual,
                    };
                    Test::Compare {
                        operand: operand.clone(),
                        accept,
                    }
                }
                "$in" | "$nin" => {
                    let values = operand.as_array().ok_or_else(|| {
                        error(&here, format!("takes an array of values, not {}", kind(operand)))
                    })?;
                    if values.len() > FILTER_IN_VALUES_MAX {
                        return Err(error(
                            &here,
                            format!(
                                "lists {} values; the limit is {FILTER_IN_VALUES_MAX}",
                                values.len()
                            ),
                        ));
                    }
                    if operator == "$in" {
                        Test::In(values.clone())
                    } else {
                        Test::Nin(values.clone())
                    }
                }
                "$exists" => match operand {
                    Value::Bool(exists) => Test::Exists(*exists),
                    other => {
                        return Err(error(
                            &here,
                            format!("takes true or false, not {}", kind(other)),
                        ))
                    }
                },
                unknown if unknown.starts_with('$') => {
                    return Err(error(&here, format!(
                        "unknown operator `{unknown}` (expected $eq, $ne, $lt, $lte, $gt, $gte, $in, $nin or $exists)"
                    )))
                }
                plain => {
                    return Err(error(&here, format!(
                        "`{plain}` is not an operator: an object of operators cannot also hold plain keys (to match an object value, use `$eq`)"
                    )))
                }
            };
            all.push(self.condition(field, test, &here)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    fn condition(&mut self, field: &str, test: Test, path: &str) -> Result<Expr, FilterError> {
        self.conditions += 1;
        if self.conditions > FILTER_CONDITIONS_MAX {
            return Err(error(
                path,
                format!("a filter has at most {FILTER_CONDITIONS_MAX} conditions"),
            ));
        }
        Ok(Expr::Condition {
            field: field.to_string(),
            test,
        })
    }
}

impl Expr {
    fn collect_fields<'a>(&'a self, fields: &mut BTreeSet<&'a str>) {
        match self {
            Expr::And(members) | Expr::Or(members) => {
                members.iter().for_each(|m| m.collect_fields(fields))
            }
            Expr::Not(inner) => inner.collect_fields(fields),
            Expr::Condition { field, .. } => {
                fields.insert(field.as_str());
            }
        }
    }

    fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            Expr::And(members) => members.iter().all(|m| m.matches(metadata)),
            Expr::Or(members) => members.iter().any(|m| m.matches(metadata)),
            Expr::Not(inner) => !inner.matches(metadata),
            Expr::Condition { field, test } => test.matches(metadata.get(field)),
        }
    }
}

impl Test {
    /// The one definition of what a condition accepts: `stored` is the field's value, `None`
    /// when the document lacks the field.
    fn matches(&self, stored: Option<&Value>) -> bool {
        match self {
            Test::Eq(wanted) => stored.is_some_and(|s| equal(s, wanted)),
            Test::Ne(unwanted) => !stored.is_some_and(|s| equal(s, unwanted)),
            Test::Compare { operand, accept } => {
                let order = stored.and_then(|s| order(s, operand));
                match (order, accept) {
                    (None, _) => false,
                    (Some(order), Accept::Less) => order == Ordering::Less,
                    (Some(order), Accept::LessOrEqual) => order != Ordering::Greater,
                    (Some(order), Accept::Greater) => order == Ordering::Greater,
                    (Some(order), Accept::GreaterOrEqual) => order != Ordering::Less,
                }
            }
            Test::In(wanted) => stored.is_some_and(|s| wanted.iter().any(|w| equal(s, w))),
            Test::Nin(unwanted) => !stored.is_some_and(|s| unwanted.iter().any(|w| equal(s, w))),
            Test::Exists(exists) => stored.is_some() == *exists,
        }
    }

    /// For equality tests none of whose operands is a number: the canonical texts a stored value
    /// must have to be equal to an operand (then a dictionary lookup decides, no parsing), and
    /// whether the test passes the values *not* equal instead (`$ne`, `$nin`).
    fn by_canonical_text(&self) -> Option<(Vec<String>, bool)> {
        let (operands, negated): (&[Value], bool) = match self {
            Test::Eq(v) => (std::slice::from_ref(v), false),
            Test::Ne(v) => (std::slice::from_ref(v), true),
            Test::In(vs) => (vs.as_slice(), false),
            Test::Nin(vs) => (vs.as_slice(), true),
            Test::Compare { .. } | Test::Exists(_) => return None,
        };
        // Numbers are equal by value (1 = 1.0), which their texts do not show.
        if operands.iter().any(Value::is_number) {
            return None;
        }
        Some((operands.iter().map(canonical_json).collect(), negated))
    }
}

/// Equality of a stored value and an operand: numbers by value, anything else by canonical text.
fn equal(stored: &Value, wanted: &Value) -> bool {
    match (stored, wanted) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            canonical_json(stored) == canonical_json(wanted)
        }
        _ => stored == wanted,
    }
}

/// How a stored value orders against an operand: numbers with numbers, strings with strings
/// (by bytes); `None` for any other pairing.
fn order(stored: &Value, operand: &Value) -> Option<Ordering> {
    match (stored, operand) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        _ => None,
    }
}

/// Integers exactly (any i64 or u64), otherwise as f64.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let integer = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// The one canonical text of a JSON value (object keys sorted, no whitespace) used as the
/// dictionary key at build time and the lookup key at query time.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| {
                    format!("{}:{}", Value::String(key.clone()), canonical_json(value))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        scalar => scalar.to_string(),
    }
}

/// Which ordinals pass a filter, and how many.
pub(crate) struct PassMask {
    words: Vec<u64>,
    pub(crate) passing: usize,
}

impl PassMask {
    /// The ordinals below `count` for which `passes` holds.
    pub(crate) fn from_fn(count: usize, mut passes: impl FnMut(usize) -> bool) -> PassMask {
        let mut words = vec![0u64; count.div_ceil(64)];
        let mut passing = 0;
        for ord in 0..count {
            if passes(ord) {
                words[ord / 64] |= 1 << (ord % 64);
                passing += 1;
            }
        }
        PassMask { words, passing }
    }

    /// Every ordinal below `count`, or none.
    fn uniform(count: usize, pass: bool) -> PassMask {
        if !pass {
            return PassMask {
                words: vec![0; count.div_ceil(64)],
                passing: 0,
            };
        }
        let mut words = vec![u64::MAX; count.div_ceil(64)];
        let tail = count % 64;
        if tail != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << tail) - 1;
            }
        }
        PassMask {
            words,
            passing: count,
        }
    }

    fn combine(&self, other: &PassMask, op: impl Fn(u64, u64) -> u64) -> PassMask {
        let words: Vec<u64> = self
            .words
            .iter()
            .zip(&other.words)
            .map(|(&a, &b)| op(a, b))
            .collect();
        let passing = words.iter().map(|w| w.count_ones() as usize).sum();
        PassMask { words, passing }
    }

    /// The ordinals both masks pass.
    pub(crate) fn and(&self, other: &PassMask) -> PassMask {
        self.combine(other, |a, b| a & b)
    }

    /// The ordinals either mask passes.
    pub(crate) fn or(&self, other: &PassMask) -> PassMask {
        self.combine(other, |a, b| a | b)
    }

    /// The ordinals below `count` this mask does not pass.
    pub(crate) fn not(&self, count: usize) -> PassMask {
        self.combine(&PassMask::uniform(count, true), |a, all| !a & all)
    }

    pub(crate) fn allows(&self, ord: u32) -> bool {
        self.words[ord as usize / 64] & (1 << (ord % 64)) != 0
    }

    /// The documents of a shard (`count` of them, metadata in `columns`) that pass `filter`.
    pub(crate) fn resolve(
        filter: &Filter,
        columns: &[ArchivedMetadataColumn],
        count: usize,
    ) -> Result<PassMask, ShardError> {
        Self::of_expr(&filter.expr, columns, count)
    }

    fn of_expr(
        expr: &Expr,
        columns: &[ArchivedMetadataColumn],
        count: usize,
    ) -> Result<PassMask, ShardError> {
        match expr {
            Expr::And(members) => {
                let mut mask = PassMask::uniform(count, true);
                for member in members {
                    if mask.passing == 0 {
                        break;
                    }
                    mask = mask.and(&Self::of_expr(member, columns, count)?);
                }
                Ok(mask)
            }
            Expr::Or(members) => {
                let mut mask = PassMask::uniform(count, false);
                for member in members {
                    if mask.passing == count {
                        break;
                    }
                    mask = mask.or(&Self::of_expr(member, columns, count)?);
                }
                Ok(mask)
            }
            Expr::Not(inner) => Ok(Self::of_expr(inner, columns, count)?.not(count)),
            Expr::Condition { field, test } => {
                match columns.iter().find(|c| c.field.as_str() == field) {
                    Some(column) => Self::of_condition(test, column, count),
                    // No passage of this shard has the field.
                    None => Ok(PassMask::uniform(count, test.matches(None))),
                }
            }
        }
    }

    /// Evaluates `test` once per distinct value of `column`, then marks each document by its
    /// value id.
    fn of_condition(
        test: &Test,
        column: &ArchivedMetadataColumn,
        count: usize,
    ) -> Result<PassMask, ShardError> {
        let value_passes = passing_values(test, &column.values)?;
        let missing_passes = test.matches(None);
        let doc_values = native_u32(&column.doc_values);
        let mut bad_id = None;
        let mask = PassMask::from_fn(count, |ord| match doc_values.get(ord) {
            Some(&NO_VALUE) | None => missing_passes,
            Some(&id) => match value_passes.get(id as usize) {
                Some(&passes) => passes,
                None => {
                    bad_id = Some(id);
                    false
                }
            },
        });
        match bad_id {
            Some(id) => Err(inconsistent(format!(
                "metadata column {:?}: value id {id} beyond its {} values",
                column.field.as_str(),
                value_passes.len()
            ))),
            None => Ok(mask),
        }
    }
}

/// Whether each value of a column's dictionary passes `test`: by lookup of the operands'
/// canonical texts where that decides, else by parsing each distinct value once.
fn passing_values(test: &Test, values: &ArchivedStringColumn) -> Result<Vec<bool>, ShardError> {
    if let Test::Exists(exists) = test {
        return Ok(vec![*exists; values.len()]);
    }
    if let Some((texts, negated)) = test.by_canonical_text() {
        let mut equal = vec![false; values.len()];
        for text in &texts {
            if let Some(id) = values.binary_search(text)? {
                equal[id] = true;
            }
        }
        if negated {
            equal.iter_mut().for_each(|passes| *passes = !*passes);
        }
        return Ok(equal);
    }
    (0..values.len())
        .map(|id| {
            let text = values.get(id)?;
            let value: Value = serde_json::from_str(text)
                .map_err(|e| inconsistent(format!("metadata value {text:?} is not JSON: {e}")))?;
            Ok(test.matches(Some(&value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Filter, FilterError> {
        match value {
            Value::Object(map) => Filter::parse(map),
            _ => panic!("not an object"),
        }
    }

    fn passes(filter: Value, metadata: Value) -> bool {
        let Value::Object(metadata) = metadata else {
            panic!("not an object")
        };
        parse(filter).unwrap().matches(&metadata)
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        assert_eq!(canonical_json(&json!("q\"uote")), r#""q\"uote""#);
    }

    #[test]
    fn filter_serialises_back_to_the_json_it_was_parsed_from() {
        for text in [
            r#"{"source": "a.html", "year": 3}"#,
            r#"{"$or": [{"year": {"$gte": 2020, "$lt": 2023}}, {"lang": {"$in": ["en", "de"]}}]}"#,
            r#"{"$not": {"draft": true}, "tags": {"$exists": false}}"#,
        ] {
            let filter: Filter = serde_json::from_str(text).unwrap();
            let original: Value = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_value(&filter).unwrap(), original, "{text}");
        }
    }

    #[test]
    fn equality_shorthand_and_operators_agree() {
        let doc = json!({"year": 2021, "lang": "en", "draft": false});
        assert!(passes(json!({"year": 2021, "lang": "en"}), doc.clone()));
        assert!(passes(json!({"year": {"$eq": 2021.0}}), doc.clone()));
        assert!(!passes(json!({"year": "2021"}), doc.clone()));
        assert!(passes(json!({"draft": false}), doc.clone()));
        assert!(passes(
            json!({"year": {"$gte": 2020, "$lt": 2022}}),
            doc.clone()
        ));
        assert!(!passes(json!({"year": {"$gt": 2021}}), doc.clone()));
        assert!(passes(
            json!({"lang": {"$lt": "fr", "$gte": "de"}}),
            doc.clone()
        ));
        assert!(passes(json!({"lang": {"$in": ["de", "en"]}}), doc.clone()));
        assert!(!passes(
            json!({"lang": {"$nin": ["de", "en"]}}),
            doc.clone()
        ));
        assert!(passes(
            json!({"$or": [{"lang": "fr"}, {"year": 2021}]}),
            doc.clone()
        ));
        assert!(!passes(json!({"$not": {"lang": "en"}}), doc.clone()));
        assert!(passes(json!({}), doc));
    }

    #[test]
    fn missing_fields_match_only_ne_nin_and_exists_false() {
        let doc = json!({"other": 1});
        assert!(passes(json!({"lang": {"$ne": "en"}}), doc.clone()));
        assert!(passes(json!({"lang": {"$nin": ["en"]}}), doc.clone()));
        assert!(passes(json!({"lang": {"$exists": false}}), doc.clone()));
        assert!(passes(json!({"$not": {"lang": {"$gt": "a"}}}), doc.clone()));
        for test in [
            json!({"lang": "en"}),
            json!({"lang": {"$gt": "a"}}),
            json!({"lang": {"$lte": "z"}}),
            json!({"lang": {"$in": ["en"]}}),
            json!({"lang": {"$exists": true}}),
        ] {
            assert!(!passes(test.clone(), doc.clone()), "{test}");
        }
    }

    #[test]
    fn comparisons_across_types_do_not_match() {
        let doc = json!({"n": 5, "s": "5", "b": true});
        assert!(!passes(json!({"n": {"$lt": "9"}}), doc.clone()));
        assert!(!passes(json!({"s": {"$lt": 9}}), doc.clone()));
        assert!(!passes(json!({"b": {"$gte": 0}}), doc.clone()));
        assert!(passes(json!({"s": {"$ne": 5}}), doc.clone()));
        assert!(passes(json!({"n": {"$gt": 4.5}}), doc));
    }

    #[test]
    fn large_integers_compare_exactly() {
        let doc = json!({"n": 9_007_199_254_740_993u64});
        assert!(!passes(json!({"n": 9_007_199_254_740_992u64}), doc.clone()));
        assert!(passes(json!({"n": {"$gt": 9_007_199_254_740_992u64}}), doc));
    }

    #[test]
    fn fields_lists_every_named_field() {
        let filter =
            parse(json!({"a": 1, "$or": [{"b": {"$gt": 1}}, {"$not": {"c": 2}}]})).unwrap();
        assert_eq!(
            filter.fields().into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn bad_filters_are_refused_naming_the_path() {
        let cases = [
            (
                json!({"year": {"$gte": 1, "$foo": 2}}),
                "filter.year.$foo",
                "unknown operator",
            ),
            (json!({"$nor": []}), "filter.$nor", "unknown operator"),
            (json!({"$and": []}), "filter.$and", "at least one"),
            (json!({"$or": {"a": 1}}), "filter.$or", "array of filters"),
            (
                json!({"$or": [{"a": 1}, 3]}),
                "filter.$or[1]",
                "filter object",
            ),
            (json!({"$not": {}}), "filter.$not", "empty filter"),
            (
                json!({"year": {"$lt": true}}),
                "filter.year.$lt",
                "number or a string",
            ),
            (
                json!({"year": {"$lt": [1]}}),
                "filter.year.$lt",
                "number or a string",
            ),
            (
                json!({"lang": {"$in": "en"}}),
                "filter.lang.$in",
                "array of values",
            ),
            (
                json!({"lang": {"$exists": 1}}),
                "filter.lang.$exists",
                "true or false",
            ),
            (
                json!({"lang": {"$eq": 1, "x": 2}}),
                "filter.lang.x",
                "not an operator",
            ),
            (
                json!({"a b": {"$gt": null}}),
                r#"filter["a b"].$gt"#,
                "number or a string",
            ),
        ];
        for (filter, path, message) in cases {
            let error = parse(filter.clone()).unwrap_err();
            assert_eq!(error.path, path, "{filter}");
            assert!(error.message.contains(message), "{filter}: {error}");
        }
    }

    #[test]
    fn nesting_and_condition_counts_are_bounded() {
        let mut deep = json!({"a": 1});
        for _ in 0..FILTER_DEPTH_MAX {
            deep = json!({"$not": deep});
        }
        assert!(parse(deep.clone()).is_ok());
        let error = parse(json!({"$and": [deep]})).unwrap_err();
        assert!(error.message.contains("nest at most"), "{error}");
        let many: Vec<Value> = (0..=FILTER_CONDITIONS_MAX)
            .map(|i| json!({"a": i}))
            .collect();
        let error = parse(json!({"$or": many})).unwrap_err();
        assert!(error.message.contains("at most"), "{error}");
        let values: Vec<Value> = (0..=FILTER_IN_VALUES_MAX).map(|i| json!(i)).collect();
        assert!(parse(json!({"a": {"$in": values}})).is_err());
    }

    #[test]
    fn not_and_or_on_masks_respect_the_count() {
        let evens = PassMask::from_fn(70, |ord| ord % 2 == 0);
        let odds = evens.not(70);
        assert_eq!((evens.passing, odds.passing), (35, 35));
        assert!(odds.allows(69) && !odds.allows(68));
        assert_eq!(evens.or(&odds).passing, 70);
        assert_eq!(PassMask::uniform(70, true).not(70).passing, 0);
    }
}
