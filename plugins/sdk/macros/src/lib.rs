//! The macros of `ferry-plugin`: each expands, in the plugin crate, to the
//! contract's bindings (`wit_bindgen::generate!` on the WIT carried here),
//! the export's glue and `export!`. See the `ferry-plugin` crate.

use proc_macro::TokenStream;

/// `ferry:transform@0.1.0` (transform-user, user-key).
const USER_WIT: &str = include_str!("../../../../wit/transform.wit");
/// `ferry:transform@0.2.0` (transform-row).
const ROW_WIT: &str = include_str!("../../../../wit/row/transform-row.wit");

fn bindings(wit: &str, world: &str) -> String {
    format!(
        "ferry_plugin::wit_bindgen::generate!({{ inline: r####\"{wit}\"####, world: \"{world}\", \
         runtime_path: \"ferry_plugin::wit_bindgen::rt\" }});"
    )
}

fn fail(message: &str) -> TokenStream {
    format!("compile_error!({message:?});").parse().expect("a compile_error! call")
}

/// `transform_user!(transform)` or `transform_user!(transform, target_key = key)`:
/// exports `transform-user` (the batch form maps the one-row function over
/// the batch, in order) and, with `target_key`, `user-key`. Brings
/// `LegacyUser`, `NewUser` and `RowError` into scope for the functions'
/// signatures.
#[proc_macro]
pub fn transform_user(input: TokenStream) -> TokenStream {
    let text = input.to_string();
    let mut parts = text.split(',').map(str::trim).filter(|p| !p.is_empty());
    let Some(transform) = parts.next() else {
        return fail("transform_user!: name the transform function: transform_user!(transform)");
    };
    let mut target_key = None;
    for part in parts {
        match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("target_key", f)) => target_key = Some(f.to_string()),
            _ => {
                return fail(&format!("transform_user!: unknown argument `{part}` (expected `target_key = function`)"));
            }
        }
    }
    let world = if target_key.is_some() { "user-transform-keyed" } else { "user-transform" };
    let mut out = bindings(USER_WIT, world);
    out.push_str(&format!(
        "use exports::ferry::transform::transform_user::{{LegacyUser, NewUser, RowError}};
         #[doc(hidden)]
         pub struct FerryPlugin;
         impl exports::ferry::transform::transform_user::Guest for FerryPlugin {{
             fn transform(row: LegacyUser) -> Result<NewUser, RowError> {{ {transform}(row) }}
             fn transform_batch(rows: Vec<LegacyUser>) -> Vec<Result<NewUser, RowError>> {{
                 rows.into_iter().map({transform}).collect()
             }}
         }}"
    ));
    if let Some(key) = target_key {
        out.push_str(&format!(
            "impl exports::ferry::transform::user_key::Guest for FerryPlugin {{
                 fn target_key(id: i64) -> Result<String, RowError> {{ {key}(id) }}
             }}"
        ));
    }
    out.push_str("export!(FerryPlugin);");
    out.parse().unwrap_or_else(|e| fail(&format!("transform_user!: {e}")))
}

/// `transform_row!(Plugin)`: exports `transform-row` for `Plugin`, which
/// implements the generated `exports::ferry::transform::transform_row::Guest`.
#[proc_macro]
pub fn transform_row(input: TokenStream) -> TokenStream {
    let ty = input.to_string();
    if ty.trim().is_empty() {
        return fail("transform_row!: name the type that implements the export: transform_row!(Plugin)");
    }
    let mut out = bindings(ROW_WIT, "row-transform");
    out.push_str(&format!("export!({ty});"));
    out.parse().unwrap_or_else(|e| fail(&format!("transform_row!: {e}")))
}
