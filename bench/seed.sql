-- bench/seed.sql — the legacy `users` table, filled with N seed-shaped rows.
--
-- Run by bench/run.sh as:  psql -d ferry_bench_src -v n=<N> -f bench/seed.sql
--
-- Set-based (one INSERT … SELECT over generate_series) and deterministic: every
-- choice is derived from the row's id through hashint8extended(id, <salt>), so
-- the same N always gives byte-identical data. No random().
--
-- Shape (per 1000 rows, approximately):
--   names     Unicode, several spaces, no space, leading/trailing/double space,
--             NBSP (not a split point), tab/newline/backslash (COPY escaping),
--             ~0.5 NULL name, ~0.5 NULL email, ~0.2 NULL created_at
--   emails    mixed case, Unicode (Ü, É, Å, ß, Turkish İ, Greek final sigma)
--   created   2010–2024 with microseconds (10% with .000000), 0.5% before 1970
--   metadata  300 NULL, 20 '', 10 invalid JSON, 2 non-object JSON (incl. null),
--             20 ~2 KB documents (a "bio" field), the rest small objects with
--             theme/notifications present/absent/null/false/0/""/other values.
--
-- Rows the seed's transformUser rejects (the SQL baseline skips them, ferry
-- dead-letters them): NULL name, NULL email, NULL created_at, invalid JSON,
-- JSON `null` — about 1.2% of N.

\set ON_ERROR_STOP on

CREATE TABLE users (
    id         bigint PRIMARY KEY,
    name       text,
    email      text,
    created_at timestamp,
    metadata   text
);

INSERT INTO users (id, name, email, created_at, metadata)
SELECT
    id,

    -- name ------------------------------------------------------------------
    CASE
        WHEN h_null % 2000 = 0 THEN NULL                          -- ~0.05%
        WHEN h_name % 4 = 0 THEN 'User' || id || ' Test ' || (id % 97)
        ELSE (ARRAY[
            'María José de la Cruz',
            'Zoë Ångström',
            '李 小龍',
            'Madonna',                      -- no space: last name ''
            ' Leading Space',               -- first name ''
            'Trailing Space ',
            'Ana  Double Space',            -- last name ' Double Space'
            'Jean-Luc Picard',
            'Nguyễn Văn An',
            'Ólafur Arnalds',
            'Σωκράτης Παπαδόπουλος',
            E'Jean\u00a0Dupont',            -- NBSP is not ' ': no split
            'محمد علي',
            '😀 Emoji Person',
            'Søren Aabye Kierkegaard',
            'Ludwig van Beethoven',
            'Björk',
            'Анна Аркадьевна Каренина',
            'O''Brien Pat',
            E'Tab\tSeparated Name',         -- COPY text escaping
            E'Back\\slash Name',
            E'Line\nBreak Name',
            '',                             -- empty: first '' and last ''
            'Zoë',
            'Mary Ann de la Cruz'
        ])[1 + h_name / 4 % 25]
    END,

    -- email -----------------------------------------------------------------
    CASE
        WHEN h_null % 2000 = 1 THEN NULL                          -- ~0.05%
        ELSE (ARRAY[
            'Ünïcode.User', 'John.DOE', 'ÉLODIE.Åström', 'MiXeD.CaSe',
            'STRASSE.straße', 'İlker.YILMAZ', 'ΟΔΥΣΣΕΥΣ', 'plain', 'ZOË'
        ])[1 + h_mail % 9]
        || '.' || id || '@'
        || (ARRAY['Example.COM', 'GMAIL.com', 'Exämple.ORG', 'Sub.Domain.IO'])[1 + h_mail / 9 % 4]
    END,

    -- created_at --------------------------------------------------------------
    CASE
        WHEN h_null % 5000 = 2 THEN NULL                          -- ~0.02%
        ELSE
            (CASE WHEN h_time % 200 = 0
                  THEN timestamp '1952-06-15 00:00:00'            -- 1952–1967: before the epoch
                  ELSE timestamp '2010-01-01 00:00:00' END)
            + make_interval(secs => (h_time / 200 % 473040000)::double precision)
            + CASE WHEN h_time % 10 = 3 THEN interval '0'         -- whole seconds
                   ELSE (h_usec % 1000000) * interval '1 microsecond' END
    END,

    -- metadata ----------------------------------------------------------------
    CASE
        WHEN h_meta % 1000 < 300 THEN NULL                        -- 30%
        WHEN h_meta % 1000 < 320 THEN ''                          -- 2%: '' means {}
        WHEN h_meta % 1000 < 330 THEN (ARRAY[                     -- 1%: invalid JSON
            '{"theme": "dark"',
            '{theme: ''dark''}',
            '{"theme": "dark",}',
            'not json at all',
            '{"notifications": tru}'
        ])[1 + h_meta / 1000 % 5]
        WHEN h_meta % 1000 < 332 THEN (ARRAY[                     -- 0.2%: valid, not an object
            'null',                          -- rejected (the seed reads null.theme)
            '[1, 2, 3]', '"dark"', 'true', '0'
        ])[1 + h_meta / 1000 % 5]
        WHEN h_meta % 1000 < 352 THEN                             -- 2%: ~2 KB documents
            '{"theme": "dark", "notifications": false, "bio": "'
            || repeat('Lorem ipsum dolor sit amet ' || (id % 1000) || ', ', 64)
            || '", "tags": ["a", "b", "ç"]}'
        WHEN h_meta % 1000 < 355 THEN (ARRAY[                     -- odd but valid spellings
            '{"theme":"dark","theme":"light"}',                   -- duplicate key: last wins
            '{"theme":"d\u00e4rk","notifications":"\u00e9t\u00e9"}',
            E'{\n  "theme" : "dark" ,\n  "notifications" : 0\n}'
        ])[1 + h_meta / 1000 % 3]
        ELSE                                                      -- small objects
            '{' || concat_ws(', ',
                NULLIF((ARRAY[
                    '', '', '"theme": null', '"theme": false', '"theme": 0', '"theme": ""',
                    '"theme": "dark"', '"theme": "dark"', '"theme": "light"', '"theme": "solarized"',
                    '"theme": 1', '"theme": true', '"theme": {"name": "x"}', '"theme": "Dämmerung"'
                ])[1 + h_meta / 1000 % 14], ''),
                NULLIF((ARRAY[
                    '', '', '"notifications": null', '"notifications": false', '"notifications": 0',
                    '"notifications": ""', '"notifications": true', '"notifications": true',
                    '"notifications": {"email": true}', '"notifications": "daily"'
                ])[1 + h_meta / 14000 % 10], ''),
                NULLIF((ARRAY[
                    '', '', '', '"lang": "fr"', '"tz": "Europe/Paris", "beta": [1, 2]'
                ])[1 + h_meta / 140000 % 5], '')
            ) || '}'
    END
FROM (
    -- One independent non-negative hash per decision.
    SELECT id,
           abs(hashint8extended(id, 1) % 1000000000) AS h_name,
           abs(hashint8extended(id, 2) % 1000000000) AS h_mail,
           abs(hashint8extended(id, 3) % 1000000000) AS h_meta,
           abs(hashint8extended(id, 4) % 1000000000000000) AS h_time,
           abs(hashint8extended(id, 5) % 1000000000) AS h_usec,
           abs(hashint8extended(id, 6) % 1000000000) AS h_null
    FROM generate_series(1, :n::bigint) AS id
) AS h;

-- Hint bits, visibility map and statistics now, so that neither pipeline pays
-- for them during its timed run.
VACUUM (FREEZE, ANALYZE) users;
