-- Leases for the workers that must run on one server of a cluster at a
-- time (bisections, boot deadlines, power cycling): the holder renews its
-- lease every round; when it stops renewing (killed, partitioned), another
-- server takes the lease over once it has expired.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
