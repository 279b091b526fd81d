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
-- One column of each further type the binlog connector names, for the decoder's tests.
CREATE TABLE every_type (
    id        int PRIMARY KEY,
    moment3   datetime(3),
    moment_tz timestamp(6) NULL,
    clock     time(6),
    opened    year,
    flags     bit(12),
    one_bit   bit(1),
    tiny_flag tinyint(1),
    mood      enum('calm', 'busy'),
    moods     set('calm', 'busy', 'away'),
    medium_u  mediumint unsigned,
    wide      decimal(65, 30),
    ident     char(36),
    body      text,
    blob_col  blob
);
INSERT INTO every_type VALUES (1, '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789012',
    '23:59:59.999999', 2024, b'101000000101', b'1', 1, 'busy', 'calm,away', 16777215,
    12345678901234567890123456789012345.123456789012345678901234567891,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'text ü', X'00FF');
