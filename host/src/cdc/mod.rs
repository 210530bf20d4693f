//! Change data capture: positions in a change stream, change events
//! (Debezium's envelope), and applying them exactly once.

pub mod apply;
pub mod ddl;
pub mod debezium;
pub mod input;
pub mod pgoutput;
pub mod resync;
pub mod reverse;
pub use crate::position;
pub mod events;
pub mod sync;
pub mod tables;
