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
//! The body is deserialised straight into the request's parts ([`parse`](mod@parse)),
//! with no generic JSON tree in between, and `data` and `index` are refused
//! as soon as they pass the row limit, so a body's cost is bounded by the
//! limits, not by its content. Every error names the field and the row at
//! fault but never echoes a value: a value may be a patient's image or
//! report text.
//!
//! The answer ([`Embeddings`]) takes one of two JSON shapes
//! ([`ResponseFormat`]): by default the live service's, a list with one
//! object per row (`[{"image_features": [[...]], "text_features": [[...]],
//! "scaling_factor": 4.51}]`), which the published clients read; on request
//! the documentation's, one object with a list of vectors per field.

use serde::Serialize;

use crate::ErrorCode;

mod parse;

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
    /// More rows than allowed, in `data` or in `index`. Parsing stops at
    /// the first entry past the limit, so the count is the limit plus one.
    #[error("request has at least {rows} rows; at most {max} are allowed per request")]
    TooManyRows {
        /// Rows counted when the request was refused.
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

/// A column of `input_data.columns`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Image,
    Text,
}

/// What a valid request asks for, counted without keeping its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Rows (`input_data.data` entries).
    pub rows: usize,
    /// Rows holding an image.
    pub images: usize,
    /// Rows holding a text.
    pub texts: usize,
}

/// Parses and validates a scoring request body. The body is deserialised
/// straight into the request ([`parse`](mod@parse)): no generic JSON tree,
/// and `data` or `index` past `limits.max_rows` is refused as it is read.
pub fn parse_request(body: &[u8], limits: &RequestLimits) -> Result<ScoreRequest, RequestError> {
    parse::run(body, limits, true)
}

/// Validates a scoring request body as [`parse_request`] does (same checks,
/// same errors) and counts what it asks for, keeping none of its strings:
/// what a proxy needs to admit and account for a request.
pub fn count_request(body: &[u8], limits: &RequestLimits) -> Result<RequestCounts, RequestError> {
    parse::run(body, limits, false).map(|r| RequestCounts {
        rows: r.rows.len(),
        images: r.image_count(),
        texts: r.text_count(),
    })
}

/// Validates an already-parsed request document (the same checks as
/// [`parse_request`]).
pub fn parse_value(
    value: serde_json::Value,
    limits: &RequestLimits,
) -> Result<ScoreRequest, RequestError> {
    parse::run_value(value, limits)
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

    /// The amplification attack: one row of data, an `index` of millions
    /// of entries. It is refused with the row limit's code as the entry past
    /// the limit is read: the rest of the body is never looked at (here it
    /// is not even JSON), so nothing of it is kept.
    #[test]
    fn a_long_index_is_refused_while_reading() {
        let limits = RequestLimits { max_rows: 4 };
        let mut body = br#"{"input_data":{"columns":["text"],"data":[["t"]],"index":["#.to_vec();
        body.extend(b"0,".repeat(2_000_000));
        let cut = body.clone();
        assert_eq!(
            parse_request(&cut, &limits).unwrap_err(),
            RequestError::TooManyRows { rows: 5, max: 4 }
        );
        body.extend(b"0]}}");
        let e = parse_request(&body, &limits).unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooManyRows);
        assert_eq!(
            e.to_string(),
            "request has at least 5 rows; at most 4 are allowed per request"
        );
        assert_eq!(count_request(&body, &limits).unwrap_err(), e);
        // Data past the limit, likewise, before the body's end.
        let mut rows = br#"{"input_data":{"data":["#.to_vec();
        rows.extend(br#"["t"],"#.repeat(100));
        assert_eq!(
            parse_request(&rows, &limits).unwrap_err(),
            RequestError::TooManyRows { rows: 5, max: 4 }
        );
    }

    #[test]
    fn keys_in_any_order_unknown_keys_and_cells() {
        for body in [
            // data before columns, index last, params first
            r#"{"params":{"get_scaling_factor":false},"input_data":{"data":[["t",null],["","aW1n"]],"columns":["text","image"],"index":[0,1]}}"#,
            // unknown keys anywhere are skipped, whatever they hold
            r#"{"x":[1,{"a":[]}],"input_data":{"extra":{"k":[1,2,3]},"index":["a","b"],"columns":["text","image"],"data":[["t",""],[null,"aW1n"]]},"params":{"other":1,"get_scaling_factor":"FALSE"}}"#,
        ] {
            let r = parse(body).unwrap();
            assert!(!r.get_scaling_factor);
            assert_eq!(r.rows.len(), 2);
            assert_eq!(r.rows[0].text.as_deref(), Some("t"));
            assert_eq!(r.rows[0].image, None);
            assert_eq!(r.rows[1].text, None);
            assert_eq!(r.rows[1].image.as_deref(), Some("aW1n"));
        }
        // Escapes are decoded (a base64 image with JSON line breaks).
        let r = parse(
            r#"{"input_data":{"columns":["image"],"index":[0],"data":[["aW\n1n"]]},"params":null}"#,
        )
        .unwrap();
        assert_eq!(r.rows[0].image.as_deref(), Some("aW\n1n"));
        assert!(r.get_scaling_factor);
        // Too many cells are counted, not kept.
        let e = parse(r#"{"input_data":{"columns":["text"],"index":[0],"data":[["a","b","c"]]}}"#)
            .unwrap_err();
        assert_eq!(e.to_string(), "row 0: has 3 cells but `columns` names 1");
        // A row that is not an array, named once `columns` is known.
        let e =
            parse(r#"{"input_data":{"data":[{"a":1}],"index":[0],"columns":["image","text"]}}"#)
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 0: must be an array of 2 strings, got an object"
        );
        let e =
            parse(r#"{"input_data":{"data":[["",[1]]],"index":[0],"columns":["image","text"]}}"#)
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 0: the text cell must be a string, got an array"
        );
    }

    #[test]
    fn shape_messages() {
        for (body, want) in [
            (r#"{}"#, "request is missing `input_data`"),
            (
                r#"{"input_data":[]}"#,
                "`input_data` must be an object, got an array",
            ),
            (
                r#"{"input_data":{"index":[0],"data":[["t"]]}}"#,
                "`input_data` is missing `columns`",
            ),
            (
                r#"{"input_data":{"columns":["text"],"index":[0]}}"#,
                "`input_data` is missing `data`",
            ),
            (
                r#"{"input_data":{"columns":["text"],"data":[["t"]]}}"#,
                "`input_data` is missing `index`",
            ),
            (
                r#"{"input_data":{"columns":"text","index":[0],"data":[["t"]]}}"#,
                "`input_data.columns` must be an array of column names, got a string",
            ),
            (
                r#"{"input_data":{"columns":["image","text","x"],"index":[0],"data":[["t"]]}}"#,
                "`input_data.columns` must name \"image\", \"text\" or both",
            ),
            (
                r#"{"input_data":{"columns":[],"index":[0],"data":[["t"]]}}"#,
                "`input_data.columns` must name \"image\", \"text\" or both",
            ),
            (
                r#"{"input_data":{"columns":[3],"index":[0],"data":[["t"]]}}"#,
                "`input_data.columns[0]` must be a string, got a number",
            ),
            (
                r#"{"input_data":{"columns":["text"],"index":0,"data":[["t"]]}}"#,
                "`input_data.index` must be an array, got a number",
            ),
            (
                r#"{"input_data":{"columns":["text"],"index":[0],"data":{}}}"#,
                "`input_data.data` must be an array of rows, got an object",
            ),
            (
                r#"{"input_data":{"columns":["text"],"index":[],"data":[]}}"#,
                "`input_data.data` has no rows",
            ),
            (
                r#"{"input_data":{"columns":["text"],"index":[0],"data":[["t"]]},"params":true}"#,
                "`params` must be an object, got a boolean",
            ),
        ] {
            assert_eq!(parse(body).unwrap_err().to_string(), want, "{body}");
        }
        // Syntax errors after a valid start are still syntax errors.
        assert!(matches!(
            parse(r#"{"input_data":{"columns":["text"],"index":[0],"data":[["t"]]}} x"#),
            Err(RequestError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn counting_agrees_with_parsing_and_keeps_nothing() {
        let body = r#"{"input_data":{"columns":["image","text"],"index":[0,1,2],"data":[["aW1n",""],["","t"],["aW1n","t"]]}}"#;
        let r = parse(body).unwrap();
        let c = count_request(body.as_bytes(), &RequestLimits::default()).unwrap();
        assert_eq!(
            c,
            RequestCounts {
                rows: 3,
                images: r.image_count(),
                texts: r.text_count()
            }
        );
        assert_eq!((c.images, c.texts), (2, 2));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parse_value(v, &RequestLimits::default()).unwrap(), r);
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
