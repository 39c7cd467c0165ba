//! Which columns of a model hold what (ARCHITECTURE.md §4), detected from Arrow types with optional
//! name overrides, and typed views that read ids and scores whatever their physical type.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, StringArray, StringViewArray};
use arrow_schema::{DataType, Fields, Schema};

use super::ColumnNames;

/// The shape of a model's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Spark ALS `recommendForAllUsers(k)`: one row per user holding a ranked
    /// `list<struct<item, score>>`.
    Nested {
        /// Top-level user column.
        user: usize,
        /// Top-level list column.
        items: usize,
        /// Item field inside the struct.
        item: usize,
        /// Score field inside the struct.
        score: usize,
    },
    /// One row per (user, item, score[, rank]).
    Long {
        /// User column.
        user: usize,
        /// Item column.
        item: usize,
        /// Score column.
        score: usize,
        /// Optional explicit rank column, which wins over score order.
        rank: Option<usize>,
    },
    /// No user column: one list for everyone (e.g. `popular`).
    Global {
        /// Item column.
        item: usize,
        /// Score column.
        score: usize,
        /// Optional explicit rank column.
        rank: Option<usize>,
    },
}

impl Shape {
    /// The user column, absent for global models.
    pub(crate) fn user(&self) -> Option<usize> {
        match self {
            Shape::Nested { user, .. } | Shape::Long { user, .. } => Some(*user),
            Shape::Global { .. } => None,
        }
    }

    /// The short name used in `/ready` and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Shape::Nested { .. } => "nested",
            Shape::Long { .. } => "long",
            Shape::Global { .. } => "global",
        }
    }
}

fn is_id(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int32 | DataType::Int64 | DataType::Utf8 | DataType::Utf8View
    )
}

fn is_score(dt: &DataType) -> bool {
    matches!(dt, DataType::Float32 | DataType::Float64)
}

fn struct_of_list(dt: &DataType) -> Option<&Fields> {
    match dt {
        DataType::List(inner) | DataType::LargeList(inner) => match inner.data_type() {
            DataType::Struct(fields) => Some(fields),
            _ => None,
        },
        _ => None,
    }
}

/// Names the conventional user columns, tried when a long model has two id columns.
const USER_NAMES: [&str; 3] = ["user", "userId", "user_id"];

/// Picks the one field that `wanted` names, or else the only field passing `fits`.
fn pick(
    fields: &Fields,
    wanted: Option<&str>,
    fits: impl Fn(&DataType) -> bool,
    skip: &[usize],
    what: &str,
) -> Result<usize, String> {
    if let Some(name) = wanted {
        let (i, field) = fields
            .find(name)
            .ok_or_else(|| format!("no column {name:?} for the {what}"))?;
        if !fits(field.data_type()) {
            return Err(format!("column {name:?} ({}) cannot be the {what}", field.data_type()));
        }
        return Ok(i);
    }
    let candidates: Vec<usize> = (0..fields.len())
        .filter(|i| !skip.contains(i) && fits(fields[*i].data_type()))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no column can be the {what}")),
        many => Err(format!(
            "columns {:?} could each be the {what}; name one in the arm's `columns`",
            many.iter().map(|i| fields[*i].name().as_str()).collect::<Vec<_>>()
        )),
    }
}

/// Detects the shape of a model from its Arrow schema and the arm's overrides.
pub(crate) fn detect(schema: &Schema, names: &ColumnNames) -> Result<Shape, String> {
    let fields = schema.fields();
    let lists: Vec<usize> = (0..fields.len())
        .filter(|i| struct_of_list(fields[*i].data_type()).is_some())
        .collect();
    let items = match (names.items.as_deref(), lists.as_slice()) {
        (Some(name), _) => Some(pick(
            fields,
            Some(name),
            |dt| struct_of_list(dt).is_some(),
            &[],
            "list of recommendations",
        )?),
        (None, [one]) => Some(*one),
        (None, []) => None,
        (None, _) => return Err("several list<struct> columns; name one as `columns.items`".into()),
    };
    if let Some(items) = items {
        let inner = struct_of_list(fields[items].data_type()).ok_or("not a list of structs")?;
        let item = pick(inner, names.item.as_deref(), is_id, &[], "item id (struct field)")?;
        let score = pick(inner, names.score.as_deref(), is_score, &[], "score (struct field)")?;
        let user = pick(fields, names.user.as_deref(), is_id, &[items], "user id")?;
        return Ok(Shape::Nested {
            user,
            items,
            item,
            score,
        });
    }

    let score = pick(fields, names.score.as_deref(), is_score, &[], "score")?;
    let rank = fields
        .find("rank")
        .filter(|(_, f)| matches!(f.data_type(), DataType::Int32 | DataType::Int64))
        .map(|(i, _)| i);
    let skip: Vec<usize> = rank.into_iter().collect();
    let ids: Vec<usize> = (0..fields.len())
        .filter(|i| !skip.contains(i) && is_id(fields[*i].data_type()))
        .collect();
    let explicit_user = names
        .user
        .as_deref()
        .map(|n| pick(fields, Some(n), is_id, &[], "user id"))
        .transpose()?;
    let explicit_item = names
        .item
        .as_deref()
        .map(|n| pick(fields, Some(n), is_id, &[], "item id"))
        .transpose()?;
    let rest: Vec<usize> = ids
        .iter()
        .copied()
        .filter(|i| Some(*i) != explicit_user && Some(*i) != explicit_item)
        .collect();
    let (user, item) = match (explicit_user, explicit_item, rest.as_slice()) {
        (Some(u), Some(i), _) => (Some(u), i),
        (Some(u), None, [i]) => (Some(u), *i),
        (None, Some(i), [u]) => (Some(*u), i),
        (None, Some(i), []) => (None, i),
        (None, None, [i]) => (None, *i),
        (None, None, [a, b]) => {
            let named_user = [*a, *b]
                .into_iter()
                .find(|i| USER_NAMES.contains(&fields[*i].name().as_str()));
            let user = named_user.unwrap_or(*a);
            (Some(user), if user == *a { *b } else { *a })
        }
        _ => {
            return Err(format!(
                "cannot tell user and item apart among id columns {:?}; set `columns.user` and `columns.item`",
                ids.iter().map(|i| fields[*i].name().as_str()).collect::<Vec<_>>()
            ));
        }
    };
    Ok(match user {
        Some(user) => Shape::Long {
            user,
            item,
            score,
            rank,
        },
        None => Shape::Global { item, score, rank },
    })
}

/// A user id as the index hashes it: integer columns by value (so `"42"` finds `42`), text
/// columns by bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum UserKey<'a> {
    /// A value of an int32/int64 user column.
    Int(i64),
    /// A value of a text user column.
    Text(&'a str),
}

impl<'a> UserKey<'a> {
    /// The key a request's user id has in a model whose user column is integer or text;
    /// `None` when an integer model cannot hold this id at all.
    pub(crate) fn of_request(user: &'a str, int_users: bool) -> Option<Self> {
        if !int_users {
            return Some(UserKey::Text(user));
        }
        // Only the canonical spelling names an integer user: "01" or "+1" is another user
        // everywhere else (assignment hashes and cache keys use the text), so not user 1 here.
        let digits = user.strip_prefix('-').unwrap_or(user);
        let canonical = match digits {
            "0" => digits.len() == user.len(),
            _ => !digits.is_empty() && !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()),
        };
        if !canonical {
            return None;
        }
        user.parse().ok().map(UserKey::Int)
    }

    /// The 64-bit hash kept in the index and in serving snapshots: xxh3 of the value's bytes,
    /// a fixed algorithm, so a snapshot written by one build is read right by another (std's
    /// hasher may change between Rust releases). Integers and text hash under different seeds,
    /// so the text "42" of a text column and the integer 42 never meet.
    pub(crate) fn hash64(&self) -> u64 {
        match self {
            UserKey::Int(v) => xxh3_64_with_seed(&v.to_le_bytes(), 1),
            UserKey::Text(s) => xxh3_64_with_seed(s.as_bytes(), 2),
        }
    }

    /// A second, independent 64-bit hash, to tell two users apart whose `hash64` collide.
    pub(crate) fn fingerprint(&self) -> u64 {
        match self {
            UserKey::Int(v) => xxh3_64_with_seed(&v.to_le_bytes(), 3),
            UserKey::Text(s) => xxh3_64_with_seed(s.as_bytes(), 4),
        }
    }
}

/// An id column of any supported type.
pub(crate) enum Ids<'a> {
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    Utf8(&'a StringArray),
    View(&'a StringViewArray),
}

impl<'a> Ids<'a> {
    /// Views `array`, or explains which type it has instead.
    pub(crate) fn new(array: &'a dyn Array) -> Result<Self, String> {
        Ok(match array.data_type() {
            DataType::Int32 => Ids::I32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Ids::I64(array.as_primitive::<Int64Type>()),
            DataType::Utf8 => Ids::Utf8(array.as_string::<i32>()),
            DataType::Utf8View => Ids::View(array.as_string_view()),
            other => return Err(format!("id column has type {other}")),
        })
    }

    /// Whether this column holds integers (so request ids must parse as integers).
    pub(crate) fn is_int(dt: &DataType) -> bool {
        matches!(dt, DataType::Int32 | DataType::Int64)
    }

    pub(crate) fn key(&self, i: usize) -> Option<UserKey<'a>> {
        let array: &dyn Array = match self {
            Ids::I32(a) => *a,
            Ids::I64(a) => *a,
            Ids::Utf8(a) => *a,
            Ids::View(a) => *a,
        };
        if array.is_null(i) {
            return None;
        }
        Some(match self {
            Ids::I32(a) => UserKey::Int(i64::from(a.value(i))),
            Ids::I64(a) => UserKey::Int(a.value(i)),
            Ids::Utf8(a) => UserKey::Text(a.value(i)),
            Ids::View(a) => UserKey::Text(a.value(i)),
        })
    }

    /// The id as the text clients see.
    pub(crate) fn text(&self, i: usize) -> Option<Box<str>> {
        self.key(i).map(|key| match key {
            UserKey::Int(v) => v.to_string().into_boxed_str(),
            UserKey::Text(s) => s.into(),
        })
    }
}

/// A score column of either float width.
pub(crate) enum Scores<'a> {
    F32(&'a Float32Array),
    F64(&'a Float64Array),
}

impl<'a> Scores<'a> {
    pub(crate) fn new(array: &'a dyn Array) -> Result<Self, String> {
        Ok(match array.data_type() {
            DataType::Float32 => Scores::F32(array.as_primitive::<Float32Type>()),
            DataType::Float64 => Scores::F64(array.as_primitive::<Float64Type>()),
            other => return Err(format!("score column has type {other}")),
        })
    }

    /// The score, `None` for nulls (such rows are skipped: an unscored item cannot be ranked).
    pub(crate) fn at(&self, i: usize) -> Option<f32> {
        match self {
            Scores::F32(a) => a.is_valid(i).then(|| a.value(i)),
            Scores::F64(a) => a.is_valid(i).then(|| a.value(i) as f32),
        }
    }
}

/// Reads an optional int32/int64 rank column.
pub(crate) fn rank_at(array: Option<&ArrayRef>, i: usize) -> Option<i64> {
    let array = array?;
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Int32 => Some(i64::from(array.as_primitive::<Int32Type>().value(i))),
        DataType::Int64 => Some(array.as_primitive::<Int64Type>().value(i)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::Field;

    use super::*;

    fn schema(fields: Vec<Field>) -> Schema {
        Schema::new(fields)
    }

    fn recs(item: &str, score: &str, item_type: DataType) -> Field {
        let inner = Fields::from(vec![
            Field::new(item, item_type, true),
            Field::new(score, DataType::Float32, true),
        ]);
        Field::new(
            "recommendations",
            DataType::List(Arc::new(Field::new("element", DataType::Struct(inner), true))),
            true,
        )
    }

    #[test]
    fn integer_users_need_their_canonical_spelling() {
        assert_eq!(UserKey::of_request("42", true), Some(UserKey::Int(42)));
        assert_eq!(UserKey::of_request("-7", true), Some(UserKey::Int(-7)));
        assert_eq!(UserKey::of_request("0", true), Some(UserKey::Int(0)));
        for other in ["01", "+1", "-0", "-", "1.0", "abc", "99999999999999999999"] {
            assert_eq!(UserKey::of_request(other, true), None, "{other}");
        }
        assert_eq!(UserKey::of_request("01", false), Some(UserKey::Text("01")));
    }

    #[test]
    fn detects_spark_als_output_with_default_and_renamed_columns() {
        let default = schema(vec![
            Field::new("user", DataType::Int32, false),
            recs("item", "rating", DataType::Int32),
        ]);
        assert_eq!(
            detect(&default, &ColumnNames::default()),
            Ok(Shape::Nested {
                user: 0,
                items: 1,
                item: 0,
                score: 1
            })
        );
        let renamed = schema(vec![
            Field::new("userId", DataType::Int64, false),
            recs("movieId", "rating", DataType::Utf8),
        ]);
        assert_eq!(
            detect(&renamed, &ColumnNames::default()),
            Ok(Shape::Nested {
                user: 0,
                items: 1,
                item: 0,
                score: 1
            })
        );
    }

    #[test]
    fn detects_long_and_global_and_explains_ambiguity() {
        let long = schema(vec![
            Field::new("item", DataType::Int32, false),
            Field::new("user", DataType::Int32, false),
            Field::new("score", DataType::Float64, false),
            Field::new("rank", DataType::Int32, false),
        ]);
        assert_eq!(
            detect(&long, &ColumnNames::default()),
            Ok(Shape::Long {
                user: 1,
                item: 0,
                score: 2,
                rank: Some(3)
            })
        );
        let global = schema(vec![
            Field::new("item", DataType::Utf8, false),
            Field::new("score", DataType::Float32, false),
        ]);
        assert_eq!(
            detect(&global, &ColumnNames::default()),
            Ok(Shape::Global {
                item: 0,
                score: 1,
                rank: None
            })
        );
        let three = schema(vec![
            Field::new("a", DataType::Int32, false),
            Field::new("b", DataType::Int32, false),
            Field::new("c", DataType::Int32, false),
            Field::new("s", DataType::Float32, false),
        ]);
        let err = detect(&three, &ColumnNames::default()).expect_err("ambiguous");
        assert!(err.contains("columns.user"), "{err}");
        let named = ColumnNames {
            user: Some("c".into()),
            item: Some("a".into()),
            ..ColumnNames::default()
        };
        assert_eq!(
            detect(&three, &named),
            Ok(Shape::Long {
                user: 2,
                item: 0,
                score: 3,
                rank: None
            })
        );
        let missing = ColumnNames {
            user: Some("nope".into()),
            ..ColumnNames::default()
        };
        assert!(detect(&three, &missing).expect_err("missing").contains("\"nope\""));
    }
}
