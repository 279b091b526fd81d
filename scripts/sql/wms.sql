-- wms: the warehouse system. `skus` is its item master (stock on hand per product, what the
-- product entity maps); `stock` counts per storage bin, with a composite key (sku, location).
CREATE TABLE IF NOT EXISTS skus (
    sku         text    PRIMARY KEY,
    on_hand     integer NOT NULL DEFAULT 0,
    reserved    integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- harmony's version of the row, written by the JDBC sink, never by the warehouse itself.
    harmony_version text
);
ALTER TABLE skus ADD COLUMN IF NOT EXISTS harmony_version text;

INSERT INTO skus (sku, on_hand, reserved) VALUES
    ('SKU-1001', 120, 4),
    ('SKU-1002',  80, 0),
    ('SKU-2001',  35, 2),
    ('SKU-3001',  12, 1),
    ('SKU-4001', 400, 0)
ON CONFLICT (sku) DO NOTHING;

CREATE TABLE IF NOT EXISTS stock (
    sku         text    NOT NULL,
    location    text    NOT NULL,
    quantity    integer NOT NULL DEFAULT 0,
    reserved    integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, location)
);

INSERT INTO stock (sku, location, quantity, reserved) VALUES
    ('SKU-1001', 'A-01-1', 120, 4),
    ('SKU-1002', 'A-01-2',  80, 0),
    ('SKU-2001', 'B-03-1',  35, 2),
    ('SKU-3001', 'C-07-4',  12, 1),
    ('SKU-4001', 'D-02-2', 400, 0)
ON CONFLICT (sku, location) DO NOTHING;
