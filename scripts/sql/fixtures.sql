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

-- One column of every type Debezium's Postgres connector emits a semantic name or a special
-- form for (issue "Real tables"): the decoder's fixtures for each, in every converter mode.
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE TABLE every_type (
    id          integer PRIMARY KEY,
    small       smallint,
    wide        numeric(50, 10),
    free        numeric,
    money_col   money,
    real_col    real,
    day         date,
    clock       time(3),
    clock_us    time(6),
    clock_tz    timetz,
    moment_ms   timestamp(3),
    moment_us   timestamp(6),
    moment_tz   timestamptz,
    span        interval,
    ident       uuid,
    doc_json    json,
    doc_jsonb   jsonb,
    raw         bytea,
    state       mood,
    flags       bit(8),
    flags_var   varbit,
    ints        integer[],
    address     inet,
    label       varchar(20),
    code        char(3),
    markup      xml
);
ALTER TABLE every_type REPLICA IDENTITY FULL;
INSERT INTO every_type VALUES
    (1, -32768, 1234567890123456789012345678901234567890.0123456789, 0.000000000000000000000000000000000000000001,
     12.34, 3.25, '0001-01-01', '23:59:59.999', '00:00:00.000001', '12:00:00+05:30',
     '2024-02-29 12:34:56.789', '1969-12-31 23:59:59.999999', '2024-02-29 12:34:56.789012+01',
     '1 year 2 months 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '{"k": 1}', '{"k": [1, 2]}', '\x00ff', 'busy', B'10100101', B'101', ARRAY[1, 2, 3],
     '192.168.0.1/24', 'varying', 'abc', '<a>b</a>');
