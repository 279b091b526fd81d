-- The `fixtures` database: every column kind and change shape harmony's decoder must read,
-- driven by tests/integration/capture.rs through real Debezium connectors.
CREATE TABLE kinds (
    id        bigint PRIMARY KEY,
    name      text,
    price     numeric(12, 4),
    ratio     numeric,
    quantity  integer,
    big       bigint,
    flag      boolean,
    score     double precision,
    born      date,
    seen      timestamp(6),
    seen_tz   timestamptz,
    tags      text[],
    doc       jsonb,
    blob      bytea
);
-- Full before-images on update and delete.
ALTER TABLE kinds REPLICA IDENTITY FULL;

-- Default replica identity, and a body stored out of line (TOAST) without compression: an
-- update that leaves it alone makes Debezium send the unavailable-value placeholder.
CREATE TABLE notes (
    id     integer PRIMARY KEY,
    title  text NOT NULL,
    body   text
);
ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL;

-- Present before the connectors start: the snapshot reads it (op = r).
INSERT INTO kinds (id, name, price, ratio, quantity, big, flag, score, born, seen, seen_tz, tags, doc, blob)
VALUES (1, 'snapshot row', 10.5000, 0.125, 7, 9007199254740993, true, 2.5, '2024-02-29',
        '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+00', ARRAY['a', 'b'],
        '{"k": [1, 2]}', '\xdeadbeef');
