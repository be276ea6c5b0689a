-- The eval's sample shop (bench/eval): customers, products and their orders, built into build/eval/shop.sqlite3.
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, country TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
                       price_cents INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL,
                     placed_on TEXT NOT NULL);
INSERT INTO customers VALUES
  (1, 'Ada', 'London', 'UK'), (2, 'Grace', 'New York', 'USA'), (3, 'Linus', 'Helsinki', 'Finland'),
  (4, 'Alan', 'London', 'UK'), (5, 'Barbara', 'Boston', 'USA');
INSERT INTO products VALUES
  (1, 'Notebook', 'stationery', 450), (2, 'Fountain pen', 'stationery', 3500), (3, 'Desk lamp', 'home', 2900),
  (4, 'SQL for beginners', 'books', 2400), (5, 'Rust in action', 'books', 4100), (6, 'Coffee mug', 'home', 1200);
INSERT INTO orders VALUES
  (1, 1, 4, 1, '2026-01-05'), (2, 1, 1, 3, '2026-01-12'), (3, 2, 5, 1, '2026-02-02'), (4, 3, 2, 2, '2026-02-14'),
  (5, 3, 6, 4, '2026-03-01'), (6, 4, 3, 1, '2026-03-09'), (7, 5, 1, 10, '2026-03-15'), (8, 1, 6, 2, '2026-04-01'),
  (9, 2, 4, 1, '2026-04-20'), (10, 5, 5, 1, '2026-05-03'), (11, 4, 1, 5, '2026-05-18'), (12, 2, 3, 2, '2026-06-07');
