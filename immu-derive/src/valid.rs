//! Validation of an [`Entity`]: table and column names, reserved and duplicate
//! columns and column constants, `sql_type` values, `references`. Every problem is recorded, spanned on the offending token.

use std::collections::HashMap;

use crate::ast::{Entity, Field, Name};
use crate::errors::Errors;
use crate::names::{
    NameKind, Reserved, constant_ident, identifier_problem, reserved, reserved_constant, show,
};

impl Entity<'_> {
    /// Records every problem of the entity in `errors`.
    pub(crate) fn validate(&self, errors: &mut Errors) {
        check_name(&self.table, NameKind::Table, &self.rust_name, errors);
        if let Some(shape) = &self.shape {
            match shape.base10_parse::<i32>() {
                Ok(n) if n >= 1 && shape.suffix().is_empty() => {}
                _ => errors.at(shape.span(), "`shape` must be a number from 1 to 2147483647: `shape = 2`"),
            }
        }
        if let Some(upcast) = &self.upcast {
            let shape = self.shape.as_ref().and_then(|s| s.base10_parse::<i32>().ok()).unwrap_or(1);
            if shape < 2 {
                errors.spanned(
                    upcast,
                    "`upcast` converts versions written by an older shape of the entity: give this struct \
                     its own, newer shape too, such as `#[immu(shape = 2, upcast = ...)]`",
                );
            }
        }

        // Column name -> the field that took it first; the same for constant names.
        let mut taken: HashMap<&str, &Field<'_>> = HashMap::new();
        let mut constants: HashMap<&str, &Field<'_>> = HashMap::new();
        for field in &self.fields {
            let mut reserved_column = false;
            if check_name(&field.column, NameKind::Column, &field.field_name, errors) {
                if let Some(reserved) = reserved(&field.column.value) {
                    errors.at(field.column.span, reserved_message(field, reserved));
                    reserved_column = true;
                } else if let Some(first) = taken.get(field.column.value.as_str()) {
                    let hint = if field.column.from_attr && first.column.from_attr {
                        "give one of them another name"
                    } else {
                        "give one of them another name with #[immu(rename = \"...\")]"
                    };
                    errors.at(
                        field.column.span,
                        format!(
                            "column `{}` is already used by field `{}`; {hint}",
                            field.column.value, first.field_name
                        ),
                    );
                } else {
                    taken.insert(&field.column.value, field);
                }
            }
            // A field named like a reserved column also takes its constant; one error is enough.
            if !reserved_column {
                check_constant(field, &mut constants, errors);
            }
            if let Some(sql_type) = &field.sql_type
                && sql_type.value().trim().is_empty()
            {
                errors
                    .at(sql_type.span(), "`sql_type` must name a PostgreSQL type, such as \"numeric(12,2)\"");
            }
            if let Some(references) = &field.references
                && field.json
            {
                errors.spanned(
                    references,
                    "`references` cannot be combined with `json`: the column holds the referenced \
                     entity's `entity_id`, a uuid",
                );
            }
        }
    }
}

/// Checks that the field's column constant is an identifier that no other field and no reserved
/// column takes.
fn check_constant<'f>(
    field: &'f Field<'_>,
    constants: &mut HashMap<&'f str, &'f Field<'f>>,
    errors: &mut Errors,
) {
    let (name, span) = (field.constant.as_str(), field.member.span());
    if constant_ident(name, span).is_none() {
        errors.at(
            span,
            format!(
                "field `{}` would generate the constant `{name}`, which is not a Rust identifier; rename the field",
                field.field_name
            ),
        );
    } else if let Some(reserved) = reserved_constant(name) {
        errors.at(
            span,
            format!(
                "field `{}` would generate the constant `{name}`, which immu generates for its reserved \
                 column `{reserved}`; rename the field",
                field.field_name
            ),
        );
    } else if let Some(first) = constants.get(name) {
        errors.at(
            span,
            format!(
                "field `{}` and field `{}` both generate the constant `{name}`; rename one",
                first.field_name, field.field_name
            ),
        );
    } else {
        constants.insert(name, field);
    }
}

/// Checks a table or column name; records the problem and returns false if it is invalid.
/// `rust` is the Rust name it belongs to (the struct or the field).
fn check_name(name: &Name, kind: NameKind, rust: &str, errors: &mut Errors) -> bool {
    let Some(problem) = identifier_problem(&name.value, kind) else {
        return true;
    };
    let noun = kind.noun();
    let message = if name.from_attr {
        format!("invalid {noun} name {}: {problem}", show(&name.value))
    } else {
        let (what, key) = match kind {
            NameKind::Table => ("struct", "table"),
            NameKind::Column => ("field", "rename"),
        };
        format!(
            "the {what} name `{rust}` cannot be used as the {noun} name {}: {problem}; \
             name the {noun} with #[immu({key} = \"...\")]",
            show(&name.value)
        )
    };
    errors.at(name.span, message);
    false
}

/// The error for a column name that collides with a reserved column.
fn reserved_message(field: &Field<'_>, reserved: Reserved) -> String {
    let name = &field.column.value;
    // Renaming only the column would not do: the field's constant (`Account::VERSION`) would
    // still clash with the reserved column's.
    let fix = if field.column.from_attr {
        "choose another name in #[immu(rename = \"...\")]"
    } else {
        "rename the field"
    };
    match reserved {
        Reserved::Exact(r) => {
            format!("column `{r}` is reserved by immu (every versioned table has it); {fix}")
        }
        Reserved::CaseVariant(r) => format!(
            "column `{name}` differs from immu's reserved column `{r}` only in case, which would be \
             confusing; {fix}"
        ),
        Reserved::Prefix => {
            format!("column `{name}` starts with `immu_`, which immu reserves for columns of its own; {fix}")
        }
    }
}
