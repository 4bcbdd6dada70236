-- Log chunks are gzip-compressed by the server already: PostgreSQL's own
-- compression (pglz) of the column only burns CPU on the ingest path.
ALTER TABLE log_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
