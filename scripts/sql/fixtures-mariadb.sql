-- The `fixtures` database on MariaDB: column kinds and change shapes of the binlog connector,
-- driven by tests/integration/capture.rs.
DROP DATABASE IF EXISTS fixtures;
CREATE DATABASE fixtures;
USE fixtures;
CREATE TABLE kinds (
    id        bigint PRIMARY KEY,
    name      varchar(100),
    price     decimal(12, 4),
    quantity  int,
    big       bigint,
    ubig      bigint unsigned,
    flag      boolean,
    score     double,
    born      date,
    seen      datetime(6),
    doc       json,
    bin       varbinary(16)
);
-- Present before the connectors start: the snapshot reads it (op = r).
INSERT INTO kinds VALUES (1, 'snapshot row', 10.5000, 7, 9007199254740993, 18446744073709551615,
    true, 2.5, '2024-02-29', '2024-02-29 12:34:56.789012', '{"k": [1, 2]}', X'DEADBEEF');
