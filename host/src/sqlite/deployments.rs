//! The deployment store in SQLite (`ferry_deployments`).

crate::deployments::deployment_store!(
    super::tables::SqliteTables,
    conn = super::control::SqliteConn::conn,
    table = "ferry_deployments",
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    time_text = "",
    exists = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_deployments'"
);
