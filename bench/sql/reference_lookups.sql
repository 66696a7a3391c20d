-- The invoice_line upsert of an upstream batch in three shapes, alternating
-- batch by batch, on the master's schema (docs/PERFORMANCE.md, "Upstream: what
-- the reshape added per batch and per row"). In a scratch database holding
-- the master's invoice, invoice_line and stock_line tables (pg_dump -s -t … of
-- a master's database):
--   psql -d scratch -f bench/sql/reference_lookups.sql
--   psql -d scratch -c 'select * from run(300)'
-- prints the milliseconds spent in each shape: 0 no reference check, 1 a
-- NOT EXISTS look-up per reference per row, 2 the look-up skipped for rows
-- naming rows written in the same batch. run2(n) times the transfer checks'
-- two look-ups of inbound shipments on the same data.
CREATE SEQUENCE idseq;
CREATE FUNCTION tid() RETURNS text LANGUAGE sql AS $$ SELECT lpad(to_hex(nextval('idseq')),12,'0') || substr(gen_random_uuid()::text, 13) $$;
CREATE FUNCTION run(batches int) RETURNS TABLE(variant int, ms numeric) LANGUAGE plpgsql AS $f$
DECLARE
  t numeric[] := array[0,0,0];
  v int; t0 timestamptz;
  inv text[]; sl text[]; li text[]; li_inv text[]; items text[]; kn bool[];
  store text := 'store-a';
  sql_guard text; sql_none text; sql_known text; head text; tail text;
BEGIN
  head := 'INSERT INTO invoice_line AS t (id, invoice_id, store_id, item_id, stock_line_id, batch, expiry_date, pack_size, number_of_packs, cost_price_per_pack, sell_price_per_pack, received_number_of_packs) '
       || 'SELECT u.id, u.invoice_id, $6, u.item_id, u.stock_line_id, ''B'', ''2027-01-01'', 1, 5, 1.5, 2.5, 0 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[]) AS u(id, invoice_id, item_id, stock_line_id, known) ';
  tail := ' ON CONFLICT (id) DO UPDATE SET invoice_id = EXCLUDED.invoice_id, item_id = EXCLUDED.item_id, stock_line_id = EXCLUDED.stock_line_id, batch = EXCLUDED.batch, expiry_date = EXCLUDED.expiry_date, pack_size = EXCLUDED.pack_size, number_of_packs = EXCLUDED.number_of_packs, cost_price_per_pack = EXCLUDED.cost_price_per_pack, sell_price_per_pack = EXCLUDED.sell_price_per_pack, received_number_of_packs = EXCLUDED.received_number_of_packs WHERE t.store_id = EXCLUDED.store_id';
  sql_none := head || tail;
  sql_guard := head || 'WHERE NOT EXISTS (SELECT 1 FROM invoice r WHERE r.id = u.invoice_id AND r.store_id <> $6 OFFSET 0) AND NOT EXISTS (SELECT 1 FROM stock_line r WHERE r.id = u.stock_line_id AND r.store_id <> $6 OFFSET 0)' || tail;
  sql_known := head || 'WHERE (u.known OR NOT EXISTS (SELECT 1 FROM invoice r WHERE r.id = u.invoice_id AND r.store_id <> $6 OFFSET 0)) AND (u.known OR NOT EXISTS (SELECT 1 FROM stock_line r WHERE r.id = u.stock_line_id AND r.store_id <> $6 OFFSET 0))' || tail;
  SELECT array_agg(gen_random_uuid()::text) INTO items FROM generate_series(1,50);
  FOR i IN 0..batches-1 LOOP
    v := i % 3;
    SELECT array_agg(tid()) INTO inv FROM generate_series(1,95);
    SELECT array_agg(tid()) INTO sl FROM generate_series(1,950);
    SELECT array_agg(tid()) INTO li FROM generate_series(1,950);
    SELECT array_agg(inv[(g-1)/10+1]) INTO li_inv FROM generate_series(1,950) g;
    SELECT array_agg(true) INTO kn FROM generate_series(1,950);
    INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, created_at_ms)
      SELECT x, store, 'n', 'SUPPLIER_INVOICE', 'VERIFIED', 1, '', 0 FROM unnest(inv) x;
    INSERT INTO stock_line SELECT x, store, items[1], 'B', '2027-01-01', 1, 5, 5, 1.5, 2.5, 0 FROM unnest(sl) x;
    t0 := clock_timestamp();
    EXECUTE (CASE v WHEN 0 THEN sql_none WHEN 1 THEN sql_guard ELSE sql_known END)
      USING li, li_inv, (SELECT array_agg(items[1 + (g % 50)]) FROM generate_series(1,950) g), sl, kn, store;
    t[v+1] := t[v+1] + extract(epoch from clock_timestamp() - t0) * 1000;
  END LOOP;
  RETURN QUERY SELECT g, round(t[g+1], 1) FROM generate_series(0,2) g;
END $f$;
CREATE FUNCTION run2(n int) RETURNS TABLE(what text, ms_per_batch numeric) LANGUAGE plpgsql AS $f$
DECLARE ids text[]; inv text[]; t0 timestamptz; a numeric := 0; b numeric := 0; c numeric := 0; x int; q text;
BEGIN
  FOR i IN 1..n LOOP
    SELECT array_agg(id), array_agg(invoice_id) INTO ids, inv FROM (SELECT id, invoice_id FROM invoice_line ORDER BY random() LIMIT 950) s;
    q := 'SELECT count(*) FROM invoice_line WHERE id IN (' || (SELECT string_agg(quote_literal(v), ',') FROM unnest(ids) v) || ') AND invoice_id IN (SELECT id FROM invoice WHERE kind = ''INBOUND_SHIPMENT'')';
    t0 := clock_timestamp(); EXECUTE q INTO x; a := a + extract(epoch from clock_timestamp()-t0)*1000;
    q := 'SELECT count(*) FROM invoice WHERE id IN (' || (SELECT string_agg(quote_literal(v), ',') FROM unnest(inv) v) || ') AND kind = ''INBOUND_SHIPMENT''';
    t0 := clock_timestamp(); EXECUTE q INTO x; b := b + extract(epoch from clock_timestamp()-t0)*1000;
  END LOOP;
  RETURN QUERY VALUES ('lines already on inbound shipments (IN 950)', round(a/n,2)), ('inbound shipments the lines name (IN 950)', round(b/n,2));
END $f$;
