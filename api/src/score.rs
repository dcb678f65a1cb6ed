//! The scoring request and response (`POST /score`).
//!
//! A request is pandas' "split" orientation, as the managed endpoint takes it:
//!
//! ```json
//! {"input_data": {"columns": ["image", "text"], "index": [0],
//!                 "data": [["<base64 PNG>", "x-ray chest anteroposterior Pneumonia"]]},
//!  "params": {"get_scaling_factor": true}}
//! ```
//!
//! `columns` may list `image` and `text` in either order, or just one of them;
//! an empty string (or `null`) in a cell means "no image" / "no text" for that
//! row. `index` must have as many entries as `data`. `get_scaling_factor`
//! defaults to true and accepts a boolean or the strings `"true"`/`"false"` in
//! any case (the managed service documents `"True"`).
//!
//! The body is first parsed as generic JSON and then walked by hand, so every
//! error names the field and the row at fault but never echoes a value: a
//! value may be a patient's image or report text.
//!
//! The answer ([`Embeddings`]) takes one of two JSON shapes
//! ([`ResponseFormat`]): by default the live service's, a list with one
//! object per row (`[{"image_features": [[...]], "text_features": [[...]],
//! "scaling_factor": 4.51}]`), which the published clients read; on request
//! the documentation's, one object with a list of vectors per field.

use serde::Serialize;
use serde_json::Value;

use crate::ErrorCode;

/// Limits applied while parsing a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most rows (entries of `data`) one request may carry.
    pub max_rows: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_rows: 1024 }
    }
}

/// One row of a request: an optional image (base64, as sent) and an optional text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Base64-encoded image bytes, as sent (line breaks allowed); `None` when empty.
    pub image: Option<String>,
    /// Text to embed; `None` when empty.
    pub text: Option<String>,
}

impl std::fmt::Debug for Row {
    // Patient data never reaches a log line, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("image_base64_len", &self.image.as_ref().map(String::len))
            .field("text_len", &self.text.as_ref().map(String::len))
            .finish()
    }
}

/// A validated scoring request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    /// The rows, in request order.
    pub rows: Vec<Row>,
    /// Whether the response carries `scaling_factor`.
    pub get_scaling_factor: bool,
}

impl ScoreRequest {
    /// Number of rows holding an image.
    pub fn image_count(&self) -> usize {
        self.rows.iter().filter(|r| r.image.is_some()).count()
    }

    /// Number of rows holding a text.
    pub fn text_count(&self) -> usize {
        self.rows.iter().filter(|r| r.text.is_some()).count()
    }
}

/// The JSON shape of a successful answer.
///
/// The managed endpoint's documentation shows one object with a list of
/// vectors per field ([`ResponseFormat::Documented`]); the live service
/// answers with a list holding one object per request row
/// ([`ResponseFormat::PerRow`]), and every published client reads that. The
/// live shape is the default so that existing clients keep working.
#[derive(Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
pub enum ResponseFormat {
    /// A JSON list with one object per request row, in row order, as the
    /// managed endpoint answers: `[{"image_features": [[...]],
    /// "text_features": [[...]], "scaling_factor": 4.51}]`. A row's object
    /// has `image_features` when the row had an image and `text_features`
    /// when it had a text (each a list of one vector), and `scaling_factor`
    /// when asked for.
    #[default]
    PerRow,
    /// One object with a list of vectors per field, as the managed endpoint's
    /// documentation shows: `{"image_features": [[...], ...],
    /// "text_features": [[...], ...], "scaling_factor": 4.51}`, one vector
    /// per image or text in row order.
    Documented,
}

impl ResponseFormat {
    /// The name as written in specs, flags and the
    /// [`RESPONSE_FORMAT_HEADER`](crate::RESPONSE_FORMAT_HEADER).
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::PerRow => "PerRow",
            ResponseFormat::Documented => "Documented",
        }
    }
}

impl std::fmt::Display for ResponseFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ResponseFormat {
    type Err = String;

    /// Accepts the spec's names in any case, and `per-row`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("PerRow") || s.eq_ignore_ascii_case("per-row") {
            Ok(ResponseFormat::PerRow)
        } else if s.eq_ignore_ascii_case("Documented") {
            Ok(ResponseFormat::Documented)
        } else {
            Err("the response format must be PerRow or Documented".into())
        }
    }
}

/// One row's vectors: the image's when the row had an image, the text's when
/// it had a text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowEmbeddings {
    /// The image's unit vector.
    pub image: Option<Vec<f32>>,
    /// The text's unit vector.
    pub text: Option<Vec<f32>>,
}

/// The answer to one scoring request, before it takes a JSON shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    /// One entry per request row, in row order.
    pub rows: Vec<RowEmbeddings>,
    /// The model's raw `logit_scale`, when the request asked for it.
    pub scaling_factor: Option<f32>,
}

/// One row's object in the per-row shape, borrowed for serialisation.
#[derive(Serialize)]
struct RowOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    image_features: Option<[&'a [f32]; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_features: Option<[&'a [f32]; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling_factor: Option<f32>,
}

/// The documented shape, borrowed for serialisation.
#[derive(Serialize)]
struct DocumentedOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    image_features: Option<Vec<&'a [f32]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_features: Option<Vec<&'a [f32]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling_factor: Option<f32>,
}

impl Embeddings {
    /// Number of rows with an image vector.
    pub fn image_count(&self) -> usize {
        self.rows.iter().filter(|r| r.image.is_some()).count()
    }

    /// Number of rows with a text vector.
    pub fn text_count(&self) -> usize {
        self.rows.iter().filter(|r| r.text.is_some()).count()
    }

    /// The answer's JSON in `format`. The vectors are written straight from
    /// their buffers (no intermediate JSON tree).
    pub fn to_json(&self, format: ResponseFormat) -> serde_json::Result<Vec<u8>> {
        // About 11 bytes per float, plus the keys.
        let floats: usize = self
            .rows
            .iter()
            .map(|r| r.image.as_ref().map_or(0, Vec::len) + r.text.as_ref().map_or(0, Vec::len))
            .sum();
        let mut out = Vec::with_capacity(floats * 12 + self.rows.len() * 64 + 64);
        match format {
            ResponseFormat::PerRow => {
                let rows: Vec<RowOut<'_>> = self
                    .rows
                    .iter()
                    .map(|r| RowOut {
                        image_features: r.image.as_deref().map(|v| [v]),
                        text_features: r.text.as_deref().map(|v| [v]),
                        scaling_factor: self.scaling_factor,
                    })
                    .collect();
                serde_json::to_writer(&mut out, &rows)?;
            }
            ResponseFormat::Documented => {
                let field = |pick: fn(&RowEmbeddings) -> Option<&[f32]>| {
                    let v: Vec<&[f32]> = self.rows.iter().filter_map(pick).collect();
                    (!v.is_empty()).then_some(v)
                };
                serde_json::to_writer(
                    &mut out,
                    &DocumentedOut {
                        image_features: field(|r| r.image.as_deref()),
                        text_features: field(|r| r.text.as_deref()),
                        scaling_factor: self.scaling_factor,
                    },
                )?;
            }
        }
        Ok(out)
    }
}

/// An answer object's fields, for clients reading answers: in the documented
/// shape ([`ResponseFormat::Documented`]) the whole answer, one vector per
/// image and per text; in the live shape ([`ResponseFormat::PerRow`]) each
/// row's object ([`RowResponse`]), a list of one vector per field. Absent
/// fields are omitted, as the managed service does.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, Default)]
pub struct ScoreResponse {
    /// Image vectors, in row order; present when any row (the row) had an image.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_features: Option<Vec<Vec<f32>>>,
    /// Text vectors, in row order; present when any row (the row) had a text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text_features: Option<Vec<Vec<f32>>>,
    /// The model's raw learned `logit_scale`; the temperature is `exp(scaling_factor)`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scaling_factor: Option<f32>,
}

/// One row's object of the live response shape; the answer is a list of these.
pub type RowResponse = ScoreResponse;

impl ScoreResponse {
    /// Gathers a per-row answer into the documented shape: the vectors of
    /// every row, in row order, per field.
    pub fn from_rows(rows: Vec<RowResponse>) -> Self {
        let mut out = ScoreResponse::default();
        for r in rows {
            if let Some(v) = r.image_features {
                out.image_features.get_or_insert_with(Vec::new).extend(v);
            }
            if let Some(v) = r.text_features {
                out.text_features.get_or_insert_with(Vec::new).extend(v);
            }
            if r.scaling_factor.is_some() {
                out.scaling_factor = r.scaling_factor;
            }
        }
        out
    }
}

/// Why a request was refused. Messages name fields and rows, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON at all.
    #[error("request body is not valid JSON (line {line}, column {column})")]
    Json {
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// The JSON does not have the request's shape.
    #[error("{0}")]
    Shape(String),
    /// More rows than allowed.
    #[error("request has {rows} rows; at most {max} are allowed per request")]
    TooManyRows {
        /// Rows sent.
        rows: usize,
        /// The limit.
        max: usize,
    },
}

impl RequestError {
    /// Stable machine-readable code for the error body.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Json { .. } => ErrorCode::InvalidJson,
            RequestError::Shape(_) => ErrorCode::InvalidRequest,
            RequestError::TooManyRows { .. } => ErrorCode::TooManyRows,
        }
    }
}

fn shape(msg: impl Into<String>) -> RequestError {
    RequestError::Shape(msg.into())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Image,
    Text,
}

/// Parses and validates a scoring request body.
pub fn parse_request(body: &[u8], limits: &RequestLimits) -> Result<ScoreRequest, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RequestError::Json {
        line: e.line(),
        column: e.column(),
    })?;
    parse_value(value, limits)
}

/// Validates an already-parsed request document.
pub fn parse_value(value: Value, limits: &RequestLimits) -> Result<ScoreRequest, RequestError> {
    let Value::Object(mut top) = value else {
        return Err(shape(format!(
            "request body must be a JSON object with `input_data`, got {}",
            type_name(&value)
        )));
    };
    let get_scaling_factor = parse_params(top.remove("params"))?;
    let input = top
        .remove("input_data")
        .ok_or_else(|| shape("request is missing `input_data`"))?;
    let Value::Object(mut input) = input else {
        return Err(shape(format!(
            "`input_data` must be an object, got {}",
            type_name(&input)
        )));
    };

    let columns = parse_columns(input.remove("columns"))?;

    let data = match input.remove("data") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(shape(format!(
                "`input_data.data` must be an array of rows, got {}",
                type_name(&other)
            )))
        }
        None => return Err(shape("`input_data` is missing `data`")),
    };
    if data.len() > limits.max_rows {
        return Err(RequestError::TooManyRows {
            rows: data.len(),
            max: limits.max_rows,
        });
    }
    match input.remove("index") {
        Some(Value::Array(index)) if index.len() == data.len() => {}
        Some(Value::Array(index)) => {
            return Err(shape(format!(
            "`input_data.index` has {} entries but `input_data.data` has {} rows; they must match",
            index.len(),
            data.len()
        )))
        }
        Some(other) => {
            return Err(shape(format!(
                "`input_data.index` must be an array, got {}",
                type_name(&other)
            )))
        }
        None => return Err(shape("`input_data` is missing `index`")),
    }
    if data.is_empty() {
        return Err(shape("`input_data.data` has no rows"));
    }

    let mut rows = Vec::with_capacity(data.len());
    for (i, row) in data.into_iter().enumerate() {
        let Value::Array(cells) = row else {
            return Err(shape(format!(
                "row {i}: must be an array of {} strings, got {}",
                columns.len(),
                type_name(&row)
            )));
        };
        if cells.len() != columns.len() {
            return Err(shape(format!(
                "row {i}: has {} cells but `columns` names {}",
                cells.len(),
                columns.len()
            )));
        }
        let mut out = Row::default();
        for (cell, col) in cells.into_iter().zip(columns.iter()) {
            let s = match cell {
                Value::String(s) if s.is_empty() => None,
                Value::String(s) => Some(s),
                Value::Null => None,
                other => {
                    let name = match col {
                        Column::Image => "image",
                        Column::Text => "text",
                    };
                    return Err(shape(format!(
                        "row {i}: the {name} cell must be a string, got {}",
                        type_name(&other)
                    )));
                }
            };
            match col {
                Column::Image => out.image = s,
                Column::Text => out.text = s,
            }
        }
        rows.push(out);
    }
    if rows.iter().all(|r| r.image.is_none() && r.text.is_none()) {
        return Err(shape("request has no image and no text to embed"));
    }
    Ok(ScoreRequest {
        rows,
        get_scaling_factor,
    })
}

fn parse_columns(v: Option<Value>) -> Result<Vec<Column>, RequestError> {
    let cols = match v {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(shape(format!(
                "`input_data.columns` must be an array of column names, got {}",
                type_name(&other)
            )))
        }
        None => return Err(shape("`input_data` is missing `columns`")),
    };
    if cols.is_empty() || cols.len() > 2 {
        return Err(shape(
            "`input_data.columns` must name \"image\", \"text\" or both",
        ));
    }
    let mut out = Vec::with_capacity(cols.len());
    for (i, c) in cols.iter().enumerate() {
        let col = match c.as_str() {
            Some("image") => Column::Image,
            Some("text") => Column::Text,
            // Column names are schema, not patient data, but they are still
            // client input: report only the position.
            Some(_) => {
                return Err(shape(format!(
                    "`input_data.columns[{i}]` is not a known column; allowed: \"image\", \"text\""
                )))
            }
            None => {
                return Err(shape(format!(
                    "`input_data.columns[{i}]` must be a string, got {}",
                    type_name(c)
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

fn parse_params(v: Option<Value>) -> Result<bool, RequestError> {
    let params = match v {
        None | Some(Value::Null) => return Ok(true),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(shape(format!(
                "`params` must be an object, got {}",
                type_name(&other)
            )))
        }
    };
    match params.get("get_scaling_factor") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(shape(format!(
            "`params.get_scaling_factor` must be a boolean or \"true\"/\"false\", got {}",
            match other {
                Value::String(_) => "another string",
                o => type_name(o),
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ScoreRequest, RequestError> {
        parse_request(s.as_bytes(), &RequestLimits::default())
    }

    #[test]
    fn brief_text_only_example() {
        let r = parse(
            r#"{"input_data":{"columns":["image","text"],"index":[0],
                "data":[["","a quick brown fox jumps over the lazy dog"]]},"params":{}}"#,
        )
        .unwrap();
        assert_eq!(r.rows.len(), 1);
        assert!(r.rows[0].image.is_none());
        assert_eq!(
            r.rows[0].text.as_deref(),
            Some("a quick brown fox jumps over the lazy dog")
        );
        assert!(r.get_scaling_factor);
    }

    #[test]
    fn columns_in_either_order() {
        let r = parse(
            r#"{"input_data":{"columns":["text","image"],"index":[0],"data":[["t","aW1n"]]}}"#,
        )
        .unwrap();
        assert_eq!(r.rows[0].text.as_deref(), Some("t"));
        assert_eq!(r.rows[0].image.as_deref(), Some("aW1n"));
        let r = parse(r#"{"input_data":{"columns":["text"],"index":[7],"data":[["t"]]}}"#).unwrap();
        assert_eq!(r.text_count(), 1);
        assert_eq!(r.image_count(), 0);
    }

    #[test]
    fn scaling_factor_param_forms() {
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("\"True\"", true),
            ("\"FALSE\"", false),
            ("null", true),
        ] {
            let body = format!(
                r#"{{"input_data":{{"columns":["text"],"index":[0],"data":[["t"]]}},"params":{{"get_scaling_factor":{v}}}}}"#
            );
            assert_eq!(parse(&body).unwrap().get_scaling_factor, want, "{v}");
        }
        for v in ["1", "\"yes\"", "[]", "{}"] {
            let body = format!(
                r#"{{"input_data":{{"columns":["text"],"index":[0],"data":[["t"]]}},"params":{{"get_scaling_factor":{v}}}}}"#
            );
            assert!(matches!(parse(&body), Err(RequestError::Shape(_))), "{v}");
        }
        let e =
            parse(r#"{"input_data":{"columns":["text"],"index":[0],"data":[["t"]]},"params":[1]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("`params` must be an object"));
    }

    #[test]
    fn errors_name_the_row_and_never_the_value() {
        let e = parse(r#"{"input_data":{"columns":["image","text"],"index":[0,1],"data":[["","a"],["",42]]}}"#)
            .unwrap_err();
        assert!(e.to_string().starts_with("row 1:"), "{e}");
        let e = parse(
            r#"{"input_data":{"columns":["image","secret-col"],"index":[0],"data":[["",""]]}}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse(r#"{"input_data":{"columns":["text"],"index":[0],"data":[["x"]]},"params":{"get_scaling_factor":"patient-name"}}"#)
            .unwrap_err();
        assert!(!e.to_string().contains("patient"), "{e}");
    }

    #[test]
    fn index_must_match_data() {
        let e = parse(r#"{"input_data":{"columns":["text"],"index":[0,1],"data":[["t"]]}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("2 entries"), "{e}");
    }

    #[test]
    fn row_limit() {
        let limits = RequestLimits { max_rows: 2 };
        let body =
            r#"{"input_data":{"columns":["text"],"index":[0,1,2],"data":[["a"],["b"],["c"]]}}"#;
        assert_eq!(
            parse_request(body.as_bytes(), &limits).unwrap_err(),
            RequestError::TooManyRows { rows: 3, max: 2 }
        );
    }

    #[test]
    fn non_objects_and_garbage() {
        assert!(matches!(parse("[1,2]"), Err(RequestError::Shape(_))));
        assert!(matches!(parse("\"x\""), Err(RequestError::Shape(_))));
        assert!(matches!(parse("{nope"), Err(RequestError::Json { .. })));
        assert!(matches!(parse(""), Err(RequestError::Json { .. })));
        assert!(matches!(
            parse(r#"{"input_data":{"columns":["text"],"index":[],"data":[]}}"#),
            Err(RequestError::Shape(_))
        ));
        assert!(matches!(
            parse(r#"{"input_data":{"columns":["text","text"],"index":[0],"data":[["a","b"]]}}"#),
            Err(RequestError::Shape(_))
        ));
        assert!(matches!(
            parse(r#"{"input_data":{"columns":["image","text"],"index":[0],"data":[["",""]]}}"#),
            Err(RequestError::Shape(_))
        ));
    }

    fn answer() -> Embeddings {
        Embeddings {
            rows: vec![
                RowEmbeddings {
                    image: Some(vec![0.5, -0.25]),
                    text: Some(vec![1.0, 0.0]),
                },
                RowEmbeddings {
                    image: None,
                    text: Some(vec![0.0, 1.0]),
                },
                RowEmbeddings {
                    image: Some(vec![0.125, 2.0]),
                    text: None,
                },
            ],
            scaling_factor: Some(4.5),
        }
    }

    #[test]
    fn per_row_shape_has_one_object_per_row() {
        let json = String::from_utf8(answer().to_json(ResponseFormat::PerRow).unwrap()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"[{"image_features":[[0.5,-0.25]],"text_features":[[1.0,0.0]],"scaling_factor":4.5},"#,
                r#"{"text_features":[[0.0,1.0]],"scaling_factor":4.5},"#,
                r#"{"image_features":[[0.125,2.0]],"scaling_factor":4.5}]"#
            )
        );
        let rows: Vec<RowResponse> = serde_json::from_str(&json).unwrap();
        assert_eq!(rows.len(), 3);
        let mut a = answer();
        a.scaling_factor = None;
        let json = String::from_utf8(a.to_json(ResponseFormat::PerRow).unwrap()).unwrap();
        assert!(!json.contains("scaling_factor"), "{json}");
    }

    #[test]
    fn documented_shape_has_one_list_per_field() {
        let json =
            String::from_utf8(answer().to_json(ResponseFormat::Documented).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"image_features":[[0.5,-0.25],[0.125,2.0]],"text_features":[[1.0,0.0],[0.0,1.0]],"scaling_factor":4.5}"#
        );
        // Absent fields are omitted.
        let texts = Embeddings {
            rows: vec![RowEmbeddings {
                image: None,
                text: Some(vec![1.0]),
            }],
            scaling_factor: None,
        };
        assert_eq!(
            String::from_utf8(texts.to_json(ResponseFormat::Documented).unwrap()).unwrap(),
            r#"{"text_features":[[1.0]]}"#
        );
    }

    #[test]
    fn both_shapes_carry_the_same_vectors() {
        let a = answer();
        let rows: Vec<RowResponse> =
            serde_json::from_slice(&a.to_json(ResponseFormat::PerRow).unwrap()).unwrap();
        let documented: ScoreResponse =
            serde_json::from_slice(&a.to_json(ResponseFormat::Documented).unwrap()).unwrap();
        assert_eq!(ScoreResponse::from_rows(rows), documented);
    }

    #[test]
    fn response_format_names() {
        for (s, want) in [
            ("PerRow", ResponseFormat::PerRow),
            ("perrow", ResponseFormat::PerRow),
            ("per-row", ResponseFormat::PerRow),
            ("Documented", ResponseFormat::Documented),
            (" DOCUMENTED ", ResponseFormat::Documented),
        ] {
            assert_eq!(s.parse::<ResponseFormat>().unwrap(), want, "{s}");
        }
        assert!("columns".parse::<ResponseFormat>().is_err());
        assert_eq!(ResponseFormat::default(), ResponseFormat::PerRow);
        assert_eq!(
            serde_json::to_string(&ResponseFormat::Documented).unwrap(),
            "\"Documented\""
        );
    }

    #[test]
    fn row_debug_hides_content() {
        let row = Row {
            image: Some("AAAA".into()),
            text: Some("patient has pneumonia".into()),
        };
        let d = format!("{row:?}");
        assert!(!d.contains("pneumonia") && !d.contains("AAAA"), "{d}");
    }
}
