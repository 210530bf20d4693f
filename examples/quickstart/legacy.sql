-- The seed's legacy `users` table, with the edge cases its transform meets.
-- Loaded into SQLite by examples/quickstart/run.sh.
DROP TABLE IF EXISTS users;
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    name       TEXT,
    email      TEXT,
    created_at TIMESTAMP,
    metadata   TEXT
);
INSERT INTO users (id, name, email, created_at, metadata) VALUES
 (1,  'Mary Ann de la Cruz', 'Mary.Ann@Example.COM',   '2024-01-15 09:30:00.123456', '{"theme":"dark","notifications":false}'),
 (2,  'Zoë Ångström',        'ZOË.Ångström@Example.com','2023-06-01 12:00:00.000001', NULL),
 (3,  'Prince',              'PRINCE@example.com',     '2022-02-02 02:02:02.5',      ''),
 (4,  ' Leading Space',      'lead@example.com',       '2021-03-04 05:06:07.890123', '{"theme":""}'),
 (5,  'Broken Json',         'broken@example.com',     '2020-01-01 00:00:00',        '{"theme": "dark"'),
 (6,  'Json Null',           'null@example.com',       '2020-01-01 00:00:00',        'null'),
 (7,  NULL,                  'noname@example.com',     '2020-01-01 00:00:00',        NULL),
 (8,  'No Email',            NULL,                     '2020-01-01 00:00:00',        NULL),
 (9,  'Array Meta',          'array@example.com',      '2019-07-08 09:10:11.121314', '[1,2,3]'),
 (10, 'Number Meta',         'number@example.com',     '2019-07-08 09:10:11',        '42'),
 (11, 'Falsy Values',        'falsy@example.com',      '2018-01-01 00:00:00.000100', '{"theme":0,"notifications":null}'),
 (12, 'ΣΊΣΥΦΟΣ Ὀδυσσεύς',    'ΟΔΥΣΣΕΥΣ@Example.COM',   '2017-05-05 05:05:05.555555', '{"theme":"solarized","notifications":"yes"}'),
 (13, 'İpek Yılmaz',         'İPEK@EXAMPLE.COM',       '2016-12-31 23:59:59.999999', '{"notifications":{"email":true,"sms":false}}'),
 (14, 'Jean-Luc  Picard',    'JL.Picard@Starfleet.ORG','2364-01-01 00:00:00.000001', '{"theme":{"accent":"red"},"extra":[1,2]}'),
 (15, 'Bad Time',            'time@example.com',       'last tuesday',               NULL);
