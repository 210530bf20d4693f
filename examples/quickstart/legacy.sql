-- A small legacy shop: the seed's `users` (with the edge cases its
-- transform meets), `orders` that keep their line items in a JSON column,
-- and a `countries` lookup table. Loaded into SQLite by
-- examples/quickstart/run.sh.
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS countries;
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

CREATE TABLE countries (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    eu   BOOLEAN NOT NULL
);
INSERT INTO countries VALUES ('FR', 'France', 1), ('CH', 'Suisse', 0), ('DE', 'Deutschland', 1), ('JP', '日本', 0);

CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES users (id),
    placed_at   DATETIME NOT NULL,
    status      TEXT NOT NULL,
    country     TEXT REFERENCES countries (code),
    items       JSON NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id);
INSERT INTO orders VALUES
 (100, 1,  '2024-02-01 10:00:00.5',    'paid',    'FR', '[{"sku":"BOOK-1","qty":2,"price":"12.50"},{"sku":"PEN","qty":10,"price":0.1}]'),
 (101, 2,  '2024-02-02 11:00:00',      'shipped', 'CH', '[{"sku":"LAMP","qty":1,"price":"1999.99"}]'),
 (102, 1,  '2024-02-03 12:00:00',      'test',    'FR', '[{"sku":"BOOK-1","qty":1,"price":"12.50"}]'),
 (103, 12, '2024-02-04 13:00:00',      'paid',    'DE', '{"sku":"not a list"}'),
 (104, 13, '2024-02-05 14:00:00',      'paid',    NULL, '[]'),
 (105, 14, '2364-01-01 00:00:00.000001','paid',   'JP', '[{"sku":"WARP-CORE","qty":1,"price":"123456789012345678.99"}]'),
 (106, 9,  '2024-02-06 15:00:00',      'paid',    'FR', '[{"sku":"PEN","qty":0,"price":"0.10"}]');
