-- erp: the company's system of record for the product catalogue.
-- REPLICA IDENTITY FULL: Debezium then carries the whole before-image on updates and deletes.
CREATE TABLE IF NOT EXISTS products (
    sku         text PRIMARY KEY,
    name        text           NOT NULL,
    price       numeric(10, 2) NOT NULL,
    quantity    integer        NOT NULL DEFAULT 0,
    updated_at  timestamptz    NOT NULL DEFAULT now()
);
ALTER TABLE products REPLICA IDENTITY FULL;

INSERT INTO products (sku, name, price, quantity) VALUES
    ('SKU-1001', 'Espresso cup, white',     4.90, 120),
    ('SKU-1002', 'Espresso cup, black',     4.90,  80),
    ('SKU-2001', 'Milk jug 350 ml',        14.50,  35),
    ('SKU-3001', 'Burr grinder',          129.00,  12),
    ('SKU-4001', 'Filter papers, 100 pcs',  3.20, 400)
ON CONFLICT (sku) DO NOTHING;
