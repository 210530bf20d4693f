//! The guest SDK for ferry plugins written in Rust.
//!
//! A plugin crate holds its rules and one macro call; the macro generates
//! the contract's bindings (from the WIT this SDK carries, so the plugin
//! needs no copy of it), implements the export with the batch form derived
//! from the one-row form, and exports the component:
//!
//! ```ignore
//! // LegacyUser, NewUser and RowError are brought into scope by the macro.
//! fn transform(row: LegacyUser) -> Result<NewUser, RowError> { … }
//! fn target_key(id: i64) -> Result<String, RowError> { … }
//!
//! ferry_plugin::transform_user!(transform, target_key = target_key);
//! ```
//!
//! `transform_user!(f)` exports `ferry:transform/transform-user@0.1.0`;
//! with `target_key = g` also `user-key` (so change streams can delete by
//! the source key alone). `transform_row!(T)` exports
//! `ferry:transform/transform-row@0.2.0` for a type `T` implementing the
//! generated `exports::ferry::transform::transform_row::Guest` (its rules
//! need `describe` as well as rows, so the trait is theirs to implement).
//!
//! The macros expand in the plugin crate, so the generated types are the
//! plugin's own (`exports::ferry::transform::…`, `ferry::transform::types`).
//! One macro per crate: a component exports one contract.

pub use ferry_plugin_macros::{transform_row, transform_user};
/// The bindings generator the macros expand to, so plugin crates do not
/// name it themselves.
pub use wit_bindgen;
