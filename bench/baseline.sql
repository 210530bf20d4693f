-- bench/baseline.sql — the seed's transformUser in SQL, for the baseline
-- pipeline  psql \copy (SELECT … transform …) | psql \copy users FROM STDIN.
--
-- Run by bench/run.sh in ferry_bench_src BEFORE the timed run; it only defines
-- things. All of the transform's work happens inside the timed \copy, which
-- reads the view `bench_users_transformed`.
--
-- Semantics (those of plugins/user-rules, i.e. the seed's JavaScript):
--   id            'user_' || id
--   first_name    the part before the FIRST ' ' (U+0020 only); the whole name
--                 when there is no space; '' for a leading space
--   last_name     everything after the first ' ' ('' when there is none)
--   email         lower(email) with ICU root rules ("und-x-icu"), which match
--                 JavaScript's toLowerCase / Rust's to_lowercase: Turkish 'İ'
--                 → 'i̇' and Greek final sigma 'Σ' → 'ς', where the libc
--                 C.UTF-8 lower() gives 'i' and 'σ'
--   created_at    unchanged (timestamp → timestamptz with the session in UTC)
--   settings      {"theme": metadata.theme || 'light',
--                  "notifications": metadata.notifications ?? true}
--                 metadata NULL or '' → {}; a valid non-object → defaults
-- Rows the seed would throw on are SKIPPED (a COPY pipeline cannot
-- dead-letter): NULL name, NULL email, NULL created_at (NOT NULL in the
-- target), invalid JSON, JSON null.
--
-- Known differences that SQL cannot remove (none occur in bench/seed.sql):
-- jsonb rejects "\u0000" and keeps numbers beyond f64 range that a JSON
-- parser in JS/Rust would reject or round.

\set ON_ERROR_STOP on

-- PostgreSQL 15 has no pg_input_is_valid() (that is 16+), so invalid JSON is
-- caught with an exception handler. Each call with an EXCEPTION block opens a
-- subtransaction: part of the baseline's honest cost. STRICT: NULL in, NULL
-- out, no call. Returns SQL NULL for invalid JSON (JSON `null` stays 'null').
CREATE OR REPLACE FUNCTION try_jsonb(doc text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL RESTRICTED AS $$
BEGIN
    RETURN doc::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

CREATE OR REPLACE VIEW bench_users_transformed AS
SELECT
    'user_' || s.id                                              AS id,
    split_part(s.name, ' ', 1)                                   AS first_name,
    CASE WHEN strpos(s.name, ' ') > 0
         THEN substr(s.name, strpos(s.name, ' ') + 1)
         ELSE '' END                                             AS last_name,
    lower(s.email COLLATE "und-x-icu")                           AS email,
    s.created_at                                                 AS created_at,
    jsonb_build_object(
        'theme',
        CASE WHEN s.doc -> 'theme' IS NULL                         -- missing (or not an object)
               OR s.doc -> 'theme' IN ('null', 'false', '0', '""') -- JS-falsy ('0' = 0.0 = -0 in jsonb)
             THEN '"light"'::jsonb
             ELSE s.doc -> 'theme' END,
        'notifications',
        COALESCE(NULLIF(s.doc -> 'notifications', 'null'::jsonb), 'true'::jsonb)
    )                                                            AS settings
FROM (
    SELECT u.id, u.name, u.email, u.created_at,
           CASE WHEN u.metadata IS NULL OR u.metadata = '' THEN '{}'::jsonb
                ELSE try_jsonb(u.metadata) END                   AS doc
    FROM users AS u
    -- OFFSET 0 keeps this subquery from being flattened into the outer
    -- query, which would paste try_jsonb(...) into every reference to `doc`
    -- and parse each document up to five times.
    OFFSET 0
) AS s
WHERE s.name IS NOT NULL
  AND s.email IS NOT NULL
  AND s.created_at IS NOT NULL
  AND s.doc IS NOT NULL          -- invalid JSON
  AND s.doc <> 'null'::jsonb;    -- JSON null: the seed reads null.theme and throws
