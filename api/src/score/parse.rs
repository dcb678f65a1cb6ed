//! The scoring request's parser: typed, streaming, bounded.
//!
//! The body is deserialised straight into the request's parts, with no
//! generic JSON tree: each container has its own visitor, which counts as
//! it goes. `input_data.data` and `input_data.index` are refused the moment
//! they pass the row limit ([`RequestError::TooManyRows`]), so what a body
//! costs is bounded by the limit, not by what the client sent: an `index`
//! of twelve million zeros is refused at entry `max_rows + 1`, never stored.
//! Entries that are never kept (index entries, cells past the second, keys
//! the request does not know) are skipped without being allocated.
//!
//! Keys may come in any order (`data` before `columns` is valid JSON), so a
//! row keeps its cells as they came and what they mean is decided once the
//! whole `input_data` object has been read; checks that need `columns` are
//! made then, in the order the value-tree walk made them, so messages and
//! their precedence stay as they were. No message echoes a value.
//!
//! A visitor that refuses puts the [`RequestError`] in a [`Slot`] and
//! returns a placeholder `serde_json` error; [`run`] takes the real one back
//! out. Any other `serde_json` error is a syntax error
//! ([`RequestError::Json`]).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{shape, Column, RequestError, RequestLimits, Row, ScoreRequest};

/// Where a visitor leaves the reason it refused the body.
#[derive(Default)]
struct Slot(Cell<Option<RequestError>>);

impl Slot {
    /// Records `e` and returns the error that stops deserialising.
    fn fail<E: de::Error>(&self, e: RequestError) -> E {
        self.0.set(Some(e));
        E::custom("refused")
    }
}

/// What every seed shares: the slot, the row limit, whether strings are
/// kept (parsing) or only looked at (counting).
#[derive(Clone, Copy)]
struct Ctx<'s> {
    slot: &'s Slot,
    max_rows: usize,
    keep: bool,
}

impl Ctx<'_> {
    fn too_many_rows<E: de::Error>(&self) -> E {
        self.slot.fail(RequestError::TooManyRows {
            rows: self.max_rows + 1,
            max: self.max_rows,
        })
    }
}

/// Parses `body` with `limits`; `keep` says whether cell strings are kept
/// (else a non-empty cell becomes an empty `Some`, allocating nothing).
pub(super) fn run(
    body: &[u8],
    limits: &RequestLimits,
    keep: bool,
) -> Result<ScoreRequest, RequestError> {
    let slot = Slot::default();
    let ctx = Ctx {
        slot: &slot,
        max_rows: limits.max_rows,
        keep,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = ctx.deserialize(&mut de).and_then(|r| de.end().map(|()| r));
    parsed.map_err(|e| {
        slot.0.take().unwrap_or(RequestError::Json {
            line: e.line(),
            column: e.column(),
        })
    })
}

/// Parses an already-parsed document (the same checks, same messages).
pub(super) fn run_value(
    value: serde_json::Value,
    limits: &RequestLimits,
) -> Result<ScoreRequest, RequestError> {
    let slot = Slot::default();
    let ctx = Ctx {
        slot: &slot,
        max_rows: limits.max_rows,
        keep: true,
    };
    ctx.deserialize(value)
        .map_err(|_| slot.0.take().unwrap_or_else(|| shape("invalid request")))
}

/// Visitor methods for the JSON types a visitor does not take: each calls
/// `self.wrong(<the type's name>)`.
macro_rules! wrong {
    (bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.wrong("a boolean")
        }
    };
    (num) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.wrong("a number")
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.wrong("a number")
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.wrong("a number")
        }
    };
    (str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.wrong("a string")
        }
    };
    (null) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.wrong("null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.wrong("null")
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.wrong("an array")
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            self.wrong("an object")
        }
    };
    ($($kind:ident),+) => {
        $(wrong!($kind);)+
    };
}

/// Visitor methods that take any JSON type as a deferred refusal: the value
/// is skipped (containers consumed without being kept) and `$wrong(<the
/// type's name>)` is the visitor's value.
macro_rules! deferred {
    ($wrong:expr; $($kind:ident),+) => {
        $(deferred!(@ $wrong; $kind);)+
    };
    (@ $wrong:expr; bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrong("a boolean"))
        }
    };
    (@ $wrong:expr; num) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrong("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrong("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrong("a number"))
        }
    };
    (@ $wrong:expr; str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrong("a string"))
        }
    };
    (@ $wrong:expr; null) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrong("null"))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($wrong("null"))
        }
    };
    (@ $wrong:expr; seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok($wrong("an array"))
        }
    };
    (@ $wrong:expr; map) => {
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($wrong("an object"))
        }
    };
}

/// An object key, matched without being kept.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    /// The position of the key in the list, if it is one of them.
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

// ---- the body ----------------------------------------------------------

impl<'de> DeserializeSeed<'de> for Ctx<'_> {
    type Value = ScoreRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Ctx<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self.slot.fail(shape(format!(
            "request body must be a JSON object with `input_data`, got {ty}"
        ))))
    }
}

impl<'de> Visitor<'de> for Ctx<'_> {
    type Value = ScoreRequest;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scoring request")
    }
    wrong!(bool, num, str, null, seq);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut get_scaling_factor = true;
        let mut input = None;
        while let Some(key) = map.next_key_seed(Key(&["params", "input_data"]))? {
            match key {
                Some(0) => get_scaling_factor = map.next_value_seed(Params(self))?,
                Some(1) => input = Some(map.next_value_seed(Input(self))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(input) = input else {
            return Err(self.slot.fail(shape("request is missing `input_data`")));
        };
        let rows = input.rows(self).map_err(|e| self.slot.fail(e))?;
        Ok(ScoreRequest {
            rows,
            get_scaling_factor,
        })
    }
}

// ---- params ------------------------------------------------------------

/// `params`: null or an object; its `get_scaling_factor`.
struct Params<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for Params<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl Params<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self
            .0
            .slot
            .fail(shape(format!("`params` must be an object, got {ty}"))))
    }
}

impl<'de> Visitor<'de> for Params<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    wrong!(bool, num, str, seq);
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut get = true;
        while let Some(key) = map.next_key_seed(Key(&["get_scaling_factor"]))? {
            match key {
                Some(_) => get = map.next_value_seed(ScalingFactor(self.0))?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(get)
    }
}

/// `params.get_scaling_factor`: a boolean, `"true"`/`"false"` in any case,
/// or null (true).
struct ScalingFactor<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for ScalingFactor<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl ScalingFactor<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self.0.slot.fail(shape(format!(
            "`params.get_scaling_factor` must be a boolean or \"true\"/\"false\", got {ty}"
        ))))
    }
}

impl<'de> Visitor<'de> for ScalingFactor<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }
    wrong!(num, seq, map);
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        if v.eq_ignore_ascii_case("true") {
            Ok(true)
        } else if v.eq_ignore_ascii_case("false") {
            Ok(false)
        } else {
            self.wrong("another string")
        }
    }
}

// ---- input_data --------------------------------------------------------

/// `input_data`'s parts as they came, checked together by [`Parts::rows`].
#[derive(Default)]
struct Parts {
    columns: Option<Vec<ColumnEntry>>,
    data: Option<Vec<RawRow>>,
    index: Option<usize>,
}

/// `input_data`: an object with `columns`, `index` and `data`.
struct Input<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for Input<'_> {
    type Value = Parts;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parts, D::Error> {
        d.deserialize_any(self)
    }
}

impl Input<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self
            .0
            .slot
            .fail(shape(format!("`input_data` must be an object, got {ty}"))))
    }
}

impl<'de> Visitor<'de> for Input<'_> {
    type Value = Parts;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    wrong!(bool, num, str, null, seq);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut parts = Parts::default();
        while let Some(key) = map.next_key_seed(Key(&["columns", "data", "index"]))? {
            match key {
                Some(0) => parts.columns = Some(map.next_value_seed(Columns(self.0))?),
                Some(1) => parts.data = Some(map.next_value_seed(Data(self.0))?),
                Some(_) => parts.index = Some(map.next_value_seed(Index(self.0))?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

impl Parts {
    /// The rows, once every part is known; the checks in the order (and
    /// with the words) of the value-tree walk this parser replaced.
    fn rows(self, ctx: Ctx<'_>) -> Result<Vec<Row>, RequestError> {
        let columns = columns(self.columns)?;
        let data = self
            .data
            .ok_or_else(|| shape("`input_data` is missing `data`"))?;
        match self.index {
            None => return Err(shape("`input_data` is missing `index`")),
            Some(n) if n != data.len() => {
                return Err(shape(format!(
                    "`input_data.index` has {n} entries but `input_data.data` has {} rows; they must match",
                    data.len()
                )))
            }
            Some(_) => {}
        }
        if data.is_empty() {
            return Err(shape("`input_data.data` has no rows"));
        }
        debug_assert!(data.len() <= ctx.max_rows);
        let mut rows = Vec::with_capacity(data.len());
        for (i, row) in data.into_iter().enumerate() {
            rows.push(row.into_row(i, &columns)?);
        }
        if rows.iter().all(|r| r.image.is_none() && r.text.is_none()) {
            return Err(shape("request has no image and no text to embed"));
        }
        Ok(rows)
    }
}

// ---- columns -----------------------------------------------------------

/// One entry of `input_data.columns`, as it came.
enum ColumnEntry {
    Known(Column),
    /// A string naming no column (not kept: it is client input).
    Unknown,
    /// Not a string: its type.
    NotString(&'static str),
}

/// The columns, checked as the value-tree walk checked them.
fn columns(entries: Option<Vec<ColumnEntry>>) -> Result<Vec<Column>, RequestError> {
    let entries = entries.ok_or_else(|| shape("`input_data` is missing `columns`"))?;
    if entries.is_empty() || entries.len() > 2 {
        return Err(shape(
            "`input_data.columns` must name \"image\", \"text\" or both",
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let col = match entry {
            ColumnEntry::Known(c) => c,
            // Column names are schema, not patient data, but they are still
            // client input: report only the position.
            ColumnEntry::Unknown => {
                return Err(shape(format!(
                    "`input_data.columns[{i}]` is not a known column; allowed: \"image\", \"text\""
                )))
            }
            ColumnEntry::NotString(ty) => {
                return Err(shape(format!(
                    "`input_data.columns[{i}]` must be a string, got {ty}"
                )))
            }
        };
        if out.contains(&col) {
            return Err(shape("`input_data.columns` names a column twice"));
        }
        out.push(col);
    }
    Ok(out)
}

/// `input_data.columns`: an array of at most two names; a third entry is
/// refused as it arrives.
struct Columns<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for Columns<'_> {
    type Value = Vec<ColumnEntry>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Columns<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self.0.slot.fail(shape(format!(
            "`input_data.columns` must be an array of column names, got {ty}"
        ))))
    }
}

impl<'de> Visitor<'de> for Columns<'_> {
    type Value = Vec<ColumnEntry>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    wrong!(bool, num, str, null, map);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(2);
        while let Some(entry) = seq.next_element_seed(ColumnName)? {
            if out.len() == 2 {
                // Checked first, as before: more than two is refused
                // whatever the entries are.
                return Err(self.0.slot.fail(shape(
                    "`input_data.columns` must name \"image\", \"text\" or both",
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// One column name.
struct ColumnName;

impl<'de> DeserializeSeed<'de> for ColumnName {
    type Value = ColumnEntry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ColumnEntry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ColumnName {
    type Value = ColumnEntry;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }
    deferred!(ColumnEntry::NotString; bool, num, null, seq, map);
    fn visit_str<E: de::Error>(self, v: &str) -> Result<ColumnEntry, E> {
        Ok(match v {
            "image" => ColumnEntry::Known(Column::Image),
            "text" => ColumnEntry::Known(Column::Text),
            _ => ColumnEntry::Unknown,
        })
    }
}

// ---- index -------------------------------------------------------------

/// `input_data.index`: an array whose entries are counted, never kept, up
/// to the row limit.
struct Index<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for Index<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl Index<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self.0.slot.fail(shape(format!(
            "`input_data.index` must be an array, got {ty}"
        ))))
    }
}

impl<'de> Visitor<'de> for Index<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    wrong!(bool, num, str, null, map);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
            if n > self.0.max_rows {
                return Err(self.0.too_many_rows());
            }
        }
        Ok(n)
    }
}

// ---- data --------------------------------------------------------------

/// One row of `input_data.data`, as it came.
enum RawRow {
    /// An array: its first two cells, and how many it had.
    Cells(Vec<RawCell>, usize),
    /// Not an array: its type.
    NotArray(&'static str),
}

/// One cell, as it came.
enum RawCell {
    /// `""` or null.
    Empty,
    /// A non-empty string (empty when only counting).
    Full(String),
    /// Anything else: its type.
    Wrong(&'static str),
}

impl RawRow {
    fn into_row(self, i: usize, columns: &[Column]) -> Result<Row, RequestError> {
        let (cells, n) = match self {
            RawRow::Cells(cells, n) => (cells, n),
            RawRow::NotArray(ty) => {
                return Err(shape(format!(
                    "row {i}: must be an array of {} strings, got {ty}",
                    columns.len()
                )))
            }
        };
        if n != columns.len() {
            return Err(shape(format!(
                "row {i}: has {n} cells but `columns` names {}",
                columns.len()
            )));
        }
        let mut out = Row::default();
        for (cell, col) in cells.into_iter().zip(columns) {
            let s = match cell {
                RawCell::Empty => None,
                RawCell::Full(s) => Some(s),
                RawCell::Wrong(ty) => {
                    let name = match col {
                        Column::Image => "image",
                        Column::Text => "text",
                    };
                    return Err(shape(format!(
                        "row {i}: the {name} cell must be a string, got {ty}"
                    )));
                }
            };
            match col {
                Column::Image => out.image = s,
                Column::Text => out.text = s,
            }
        }
        Ok(out)
    }
}

/// `input_data.data`: an array of rows, refused past the row limit.
struct Data<'s>(Ctx<'s>);

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = Vec<RawRow>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Data<'_> {
    fn wrong<T, E: de::Error>(self, ty: &str) -> Result<T, E> {
        Err(self.0.slot.fail(shape(format!(
            "`input_data.data` must be an array of rows, got {ty}"
        ))))
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = Vec<RawRow>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }
    wrong!(bool, num, str, null, map);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0.max_rows));
        while let Some(row) = seq.next_element_seed(RowSeed(self.0.keep))? {
            if rows.len() == self.0.max_rows {
                return Err(self.0.too_many_rows());
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// One row: an array of cells; the first two are kept, the rest counted.
struct RowSeed(bool);

impl<'de> DeserializeSeed<'de> for RowSeed {
    type Value = RawRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRow, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed {
    type Value = RawRow;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row")
    }
    deferred!(RawRow::NotArray; bool, num, str, null, map);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRow, A::Error> {
        let mut cells = Vec::with_capacity(2);
        let mut n = 0usize;
        loop {
            if n < 2 {
                match seq.next_element_seed(CellSeed(self.0))? {
                    Some(c) => cells.push(c),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            n += 1;
        }
        Ok(RawRow::Cells(cells, n))
    }
}

/// One cell: a string or null; kept when the seed says so.
struct CellSeed(bool);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = RawCell;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawCell, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = RawCell;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    deferred!(RawCell::Wrong; bool, num, seq, map);
    fn visit_unit<E: de::Error>(self) -> Result<RawCell, E> {
        Ok(RawCell::Empty)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawCell, E> {
        Ok(RawCell::Empty)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCell, E> {
        Ok(match (v.is_empty(), self.0) {
            (true, _) => RawCell::Empty,
            (false, true) => RawCell::Full(v.to_owned()),
            (false, false) => RawCell::Full(String::new()),
        })
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawCell, E> {
        Ok(match (v.is_empty(), self.0) {
            (true, _) => RawCell::Empty,
            (false, true) => RawCell::Full(v),
            (false, false) => RawCell::Full(String::new()),
        })
    }
}
