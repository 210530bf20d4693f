-- One pgbench transaction = one single-row change on the legacy users table:
-- 40% insert-or-update of a new key, 40% update of an existing key, 20% delete.
\set id random(1, 200000)
\set op random(1, 10)
\if :op <= 4
INSERT INTO users (id, name, email, created_at, metadata)
VALUES (:id + 1000000, 'Bench Insert ' || :id, 'Bench.' || :id || '@Example.COM', now(), '{"theme":"dark"}')
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, created_at = EXCLUDED.created_at;
\elif :op <= 8
UPDATE users SET name = 'Bench Update ' || :id, email = 'Up.' || :id || '@Example.COM', metadata = '{"notifications":false}' WHERE id = :id;
\else
DELETE FROM users WHERE id = :id;
\endif
