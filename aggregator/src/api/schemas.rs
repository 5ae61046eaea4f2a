//! Schemas of the fields whose limits are named constants. utoipa's attributes take literals
//! only, so these are built in code from the constants themselves: the document cannot drift
//! from what the handlers enforce.

use hitcount_wire::text::{count_text, duration_text};
use hitcount_wire::{CLOCK_SKEW_MS_MAX, EDGE_ID_BYTES_MAX, RESOURCE_ID_BYTES_MAX};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn, ParameterStyle};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, Object, ObjectBuilder, OneOfBuilder, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::{RefOr, Required, Schema};
use utoipa::{IntoParams, PartialSchema};

use super::{
    EDGE_SECRET_BYTES_MAX, LIST_PAGE_MAX, NAME_CHARS_MAX, RETENTION_DAYS_MAX, TOKEN_RESOURCES_MAX,
    VISITOR_ID_CHARS_MAX,
};
use crate::config::SECRET_BYTES_MIN;
use crate::error::byte_size;
use crate::export::{ExportQuery, Format};
use crate::merge::{MERGE_QUEUE_ENTRIES_MAX, MERGE_QUEUE_ENTRIES_MIN, MERGE_QUEUE_WAIT_MS_MAX};
use crate::query::{HitsQuery, TIME_MS_MAX};
use crate::stats::{
    Order, SERIES_RESOURCE_IDS_MAX, SeriesQuery, TOP_LIMIT_DEFAULT, TOP_LIMIT_MAX, TopQuery,
};
use crate::store::{DELTA_AGE_MS_MAX, Tier};

/// The characters of resource and edge ids (`hitcount_wire::validate_resource_id`).
pub const IDENTIFIER_PATTERN: &str = "^[A-Za-z0-9._-]+$";
/// A name has no control characters (Unicode's Cc, which PostgreSQL's text cannot always hold
/// and no person types) and at least one character that is not whitespace (names are trimmed).
pub const NAME_PATTERN: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";
/// Edge secrets are visible ASCII, so their length in characters is their length in bytes.
pub const EDGE_SECRET_PATTERN: &str = "^[!-~]+$";
/// A prefix of resource ids: their characters, or nothing.
pub const PREFIX_PATTERN: &str = "^[A-Za-z0-9._-]*$";
/// Unix milliseconds written as text.
pub const MILLIS_TEXT_PATTERN: &str = "^[0-9]+$";
/// `window`: a positive whole number and a unit.
pub const WINDOW_PATTERN: &str = "^[0-9]*[1-9][0-9]*[smhdw]$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// `type: [T, null]`, for optional fields that also take `null`.
fn nullable(schema_type: Type) -> SchemaType {
    SchemaType::from_iter([schema_type, Type::Null])
}

pub fn name() -> Object {
    string()
        .min_length(Some(1))
        .max_length(Some(NAME_CHARS_MAX))
        .pattern(Some(NAME_PATTERN))
        .description(Some(format!(
            "1 to {NAME_CHARS_MAX} characters, not all whitespace, no control characters; \
             leading and trailing whitespace is trimmed"
        )))
        .build()
}

fn identifier(max_bytes: usize) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(max_bytes))
        .pattern(Some(IDENTIFIER_PATTERN))
}

pub fn resource_id() -> Object {
    identifier(RESOURCE_ID_BYTES_MAX).build()
}

pub fn optional_resource_id() -> Object {
    identifier(RESOURCE_ID_BYTES_MAX)
        .schema_type(nullable(Type::String))
        .description(Some(format!(
            "Choose the id (ASCII letters, digits, `-`, `_`, `.`; 1 to {RESOURCE_ID_BYTES_MAX}); generated if absent"
        )))
        .build()
}

pub fn edge_id() -> Object {
    identifier(EDGE_ID_BYTES_MAX).build()
}

pub fn edge_secret() -> Object {
    string()
        .schema_type(nullable(Type::String))
        .min_length(Some(SECRET_BYTES_MIN))
        .max_length(Some(EDGE_SECRET_BYTES_MAX))
        .pattern(Some(EDGE_SECRET_PATTERN))
        .description(Some(format!(
            "The shared secret: {SECRET_BYTES_MIN} to {EDGE_SECRET_BYTES_MAX} visible ASCII characters; \
             generated if absent. Replaces an existing API key."
        )))
        .build()
}

pub fn retention_days() -> Object {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .minimum(Some(1))
        .maximum(Some(RETENTION_DAYS_MAX))
        .description(Some(format!(
            "Delete counts older than this many days (1 to {RETENTION_DAYS_MAX}); absent keeps day counts forever"
        )))
        .build()
}

pub fn visitor_id() -> Object {
    string()
        .schema_type(nullable(Type::String))
        .max_length(Some(VISITOR_ID_CHARS_MAX))
        .description(Some(format!(
            "Anything that identifies a visitor, up to {VISITOR_ID_CHARS_MAX} characters (hashed on arrival, never stored)"
        )))
        .build()
}

pub fn list_limit() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(LIST_PAGE_MAX))
        .build()
}

/// A resource pattern of a token: an id, or a prefix of one and `*`.
pub const RESOURCE_PATTERN_PATTERN: &str = r"^[A-Za-z0-9._-]+\*?$";

/// `POST /tokens`' `resources`: 1 to [`TOKEN_RESOURCES_MAX`] patterns, or absent (or null).
pub fn token_resources() -> utoipa::openapi::schema::Array {
    let pattern = string()
        .min_length(Some(1))
        .max_length(Some(RESOURCE_ID_BYTES_MAX + 1))
        .pattern(Some(RESOURCE_PATTERN_PATTERN));
    utoipa::openapi::schema::ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(pattern)
        .min_items(Some(1))
        .max_items(Some(TOKEN_RESOURCES_MAX))
        .description(Some(
            "Limits `read` and `ingest` to these resources: an id, or a prefix of one and `*` \
             (`blog.*`); every resource if absent; not with `admin`",
        ))
        .build()
}

/// A time as RFC 3339 text or Unix milliseconds (a number, or digits as text).
pub fn time_text() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(string().pattern(Some(MILLIS_TEXT_PATTERN)))
        .item(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))))
        .description(Some(
            "RFC 3339 (2026-01-31T12:00:00Z) or Unix milliseconds as digits; times before 1970 \
             count as 1970, times after 9999 as the end of 9999",
        ))
        .into()
}

/// A hit's timestamp: Unix milliseconds as a number, or [`time_text`]; `null` means now.
pub fn timestamp() -> RefOr<Schema> {
    let millis = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(TIME_MS_MAX));
    let null = ObjectBuilder::new().schema_type(Type::Null);
    OneOfBuilder::new()
        .item(millis)
        .item(time_text())
        .item(null)
        .description(Some(format!(
            "When the hit happened (default: now). A time outside {}, or older than the \
             resource's retention, is answered 422.",
            timestamp_range()
        )))
        .into()
}

/// The span a hit's own timestamp may fall in, in words.
fn timestamp_range() -> String {
    format!(
        "the last {} and the next {}",
        duration_text(DELTA_AGE_MS_MAX),
        duration_text(CLOCK_SKEW_MS_MAX)
    )
}

// Response descriptions that state a limit: `#[utoipa::path]` takes an expression there, so the
// document says what the constant says.

/// A 413 answer's description.
pub fn body_over(limit_bytes: usize) -> String {
    format!("Body over {}", byte_size(limit_bytes))
}

/// `POST /hits`' 422 answer's description.
pub fn timestamp_out_of_range() -> String {
    format!(
        "A timestamp outside {}, or older than the resource's retention; nothing was counted",
        timestamp_range()
    )
}

/// `POST /v1/deltas`' 503 answer's description.
pub fn deltas_unavailable() -> String {
    format!(
        "The store is unavailable, or more entries wait to be merged than the store merged in the \
         last {} (at least {}, at most {}); not applied; see Retry-After",
        duration_text(MERGE_QUEUE_WAIT_MS_MAX),
        count_text(MERGE_QUEUE_ENTRIES_MIN as u64),
        count_text(MERGE_QUEUE_ENTRIES_MAX as u64)
    )
}

/// The one exploded query object of a read over a period: one shape per way of naming the period
/// (`additionalProperties: false` makes them exclusive, as `query::plan` does), each with the
/// `extra` parameters of the route.
fn period_params(extra: &[(&str, RefOr<Schema>)], extra_description: &str) -> Vec<Parameter> {
    let shape = |description: &str| {
        extra.iter().fold(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .description(Some(description)),
            |shape, (name, schema)| shape.property(*name, schema.clone()),
        )
    };
    let schema: RefOr<Schema> = OneOfBuilder::new()
        .item(shape("The last 24 hours"))
        .item(
            shape("A window ending now: a number and a unit (s, m, h, d, w), e.g. `24h`")
                .property(
                    "window",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(WINDOW_PATTERN)),
                )
                .required("window"),
        )
        .item(
            shape("From start_time (inclusive) to end_time (exclusive)")
                .property("start_time", time_text())
                .property("end_time", time_text())
                .required("start_time")
                .required("end_time"),
        )
        .into();
    vec![
        ParameterBuilder::new()
            .name("window")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .style(Some(ParameterStyle::Form))
            .explode(Some(true))
            .description(Some(format!(
                "Either `window`, or `start_time` and `end_time`, or neither (the last 24 \
                 hours); {extra_description}"
            )))
            .schema(Some(schema))
            .build(),
    ]
}

impl IntoParams for HitsQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        period_params(
            &[("granularity", Tier::schema())],
            "and optionally `granularity`, the width of each series point (chosen from the \
             window if absent)",
        )
    }
}

impl IntoParams for TopQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(TOP_LIMIT_MAX))
            .into();
        let series = ObjectBuilder::new().schema_type(Type::Boolean).into();
        period_params(
            &[
                ("limit", limit),
                ("prefix", prefix().into()),
                ("order", Order::schema()),
                ("granularity", Tier::schema()),
                ("series", series),
            ],
            &format!(
                "and optionally `limit` (1 to {TOP_LIMIT_MAX}, default {TOP_LIMIT_DEFAULT}), \
                 `prefix` (only resources whose id starts with it), `order` (`count`, the \
                 default, or `uniques`), `granularity` (the width of the buckets, chosen from \
                 the period if absent) and `series` (`true`: each listed resource with its \
                 series at that granularity)"
            ),
        )
    }
}

impl IntoParams for SeriesQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        period_params(
            &[
                ("granularity", Tier::schema()),
                ("prefix", prefix().into()),
                ("resource_ids", resource_id_list().into()),
            ],
            &format!(
                "and optionally `granularity` (chosen from the window if absent), `prefix` (only \
                 resources whose id starts with it) and `resource_ids` (only these, 1 to \
                 {SERIES_RESOURCE_IDS_MAX} ids separated by commas, each of a resource that \
                 exists); without either, every resource"
            ),
        )
    }
}

impl IntoParams for ExportQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        period_params(
            &[
                ("granularity", Tier::schema()),
                ("prefix", prefix().into()),
                ("format", Format::schema()),
            ],
            "and optionally `granularity` (CSV: chosen from the window if absent; NDJSON: every \
             granularity if absent), `prefix` (only resources whose id starts with it) and \
             `format` (`csv`, the default, or `ndjson`, lossless)",
        )
    }
}

/// 1 to [`SERIES_RESOURCE_IDS_MAX`] resource ids separated by commas.
pub fn resource_id_list() -> Object {
    let id = format!("[A-Za-z0-9._-]{{1,{RESOURCE_ID_BYTES_MAX}}}");
    let more = SERIES_RESOURCE_IDS_MAX - 1;
    string()
        .pattern(Some(format!("^{id}(,{id}){{0,{more}}}$")))
        .build()
}

/// The start of resource ids: their characters, possibly none (every resource).
pub fn prefix() -> Object {
    string()
        .max_length(Some(RESOURCE_ID_BYTES_MAX))
        .pattern(Some(PREFIX_PATTERN))
        .build()
}
