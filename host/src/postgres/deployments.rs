//! The deployment store in PostgreSQL (`ferry.deployments`).

crate::deployments::deployment_store!(
    super::tables::PgTables,
    conn = super::control::PgConn::conn,
    table = "ferry.deployments",
    now = "now()",
    time_text = "text",
    exists = "SELECT count(*) FROM pg_class WHERE oid = to_regclass('ferry.deployments')"
);
