-- shop: the web shop's catalogue, with its own column names and an `active` flag.
-- Default replica identity: Debezium's before-image holds only the key on deletes.
CREATE TABLE IF NOT EXISTS items (
    item_sku    text PRIMARY KEY,
    title       text           NOT NULL,
    price       numeric(10, 2) NOT NULL,
    stock       integer        NOT NULL DEFAULT 0,
    active      boolean        NOT NULL DEFAULT true,
    updated_at  timestamptz    NOT NULL DEFAULT now()
);

INSERT INTO items (item_sku, title, price, stock) VALUES
    ('SKU-1001', 'Espresso cup, white',     4.90, 120),
    ('SKU-1002', 'Espresso cup, black',     4.90,  80),
    ('SKU-2001', 'Milk jug 350 ml',        14.50,  35),
    ('SKU-3001', 'Burr grinder',          129.00,  12)
ON CONFLICT (item_sku) DO NOTHING;
